//! The web console's static shell: HTML, CSS and JavaScript modules from
//! `crates/wharf-server/console/`, embedded in the binary (no build step,
//! no CDN, works offline) and served at `/` and `/console/...` without a
//! token. The shell holds no data: every page fetches it from the
//! documented HTTP API with the token the user types, so the console adds
//! no private endpoint. Every response carries a strict
//! Content-Security-Policy (scripts, styles and connections from this
//! origin only; no inline script) and an ETag for revalidation.

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The policy on every console response: nothing inline, nothing from
/// elsewhere; the API is same-origin (`connect-src 'self'`).
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// An embedded file: its path under `console/` and its bytes.
struct Asset {
    path: &'static str,
    bytes: &'static [u8],
}

macro_rules! assets {
    ($($path:literal),* $(,)?) => {
        &[$(Asset { path: $path, bytes: include_bytes!(concat!("../console/", $path)) }),*]
    };
}

/// Every file of `console/` (a test checks this list against the
/// directory, so a new file cannot be forgotten here).
static ASSETS: &[Asset] = assets![
    "index.html",
    "style.css",
    "favicon.svg",
    "js/api.js",
    "js/app.js",
    "js/charts.js",
    "js/format.js",
    "js/metrics.js",
    "js/vlist.js",
    "js/views/dlq.js",
    "js/views/events.js",
    "js/views/group.js",
    "js/views/overview.js",
    "js/views/topic.js",
];

/// The console's routes (merged into the HTTP router; not part of the
/// OpenAPI document, which describes the API the console calls).
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/console/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// FNV-1a of the bytes: a strong-enough validator for files that change
/// only with the binary.
fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let mut res = match ASSETS.iter().find(|a| a.path == path) {
        None => (
            StatusCode::NOT_FOUND,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such console file",
        )
            .into_response(),
        Some(a) => {
            let tag = etag(a.bytes);
            let fresh = headers
                .get(IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
            let mut res = if fresh {
                StatusCode::NOT_MODIFIED.into_response()
            } else {
                ([(CONTENT_TYPE, content_type(a.path))], a.bytes).into_response()
            };
            if let Ok(v) = HeaderValue::from_str(&tag) {
                res.headers_mut().insert(ETAG, v);
            }
            res
        }
    };
    let h = res.headers_mut();
    // Revalidate every time (the ETag makes that a 304): files have no
    // content hash in their names, and a new binary must show new files.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn files(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("console dir") {
            let e = e.expect("entry");
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.file_type().expect("type").is_dir() {
                files(&e.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }

    #[test]
    fn every_file_of_the_console_directory_is_embedded_and_nothing_else() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut on_disk = Vec::new();
        files(&dir, "", &mut on_disk);
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.path.to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn every_module_the_scripts_import_is_embedded() {
        // `import ... from './x.js'` must resolve to an embedded file, or
        // the page fails in the browser only.
        for a in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let text = std::str::from_utf8(a.bytes).expect("utf-8");
            let base = a.path.rsplit_once('/').map_or("", |(d, _)| d);
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let spec = line
                    .rsplit_once(" from ")
                    .map_or(line, |(_, s)| s)
                    .trim_start_matches("import ")
                    .trim()
                    .trim_end_matches(';')
                    .trim_matches(|c| c == '\'' || c == '"');
                let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
                for seg in spec.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        s => parts.push(s),
                    }
                }
                let target = parts.join("/");
                assert!(
                    ASSETS.iter().any(|x| x.path == target),
                    "{} imports {spec}, which resolves to {target}, not embedded",
                    a.path
                );
            }
        }
    }

    async fn get(path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::builder().uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        router::<()>()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    #[tokio::test]
    async fn shell_and_modules_are_served_with_their_types_and_the_policy() {
        for (path, ty) in [
            ("/", "text/html; charset=utf-8"),
            ("/console/style.css", "text/css; charset=utf-8"),
            ("/console/js/app.js", "text/javascript; charset=utf-8"),
            ("/console/favicon.svg", "image/svg+xml"),
        ] {
            let res = get(path, &[]).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            assert_eq!(res.headers()[CONTENT_TYPE], ty, "{path}");
            assert_eq!(res.headers()[CONTENT_SECURITY_POLICY], CSP, "{path}");
            assert_eq!(res.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(res.headers()[CACHE_CONTROL], "no-cache");
        }
        let missing = get("/console/nope.js", &[]).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.headers()[CONTENT_SECURITY_POLICY], CSP);
    }

    #[tokio::test]
    async fn a_matching_etag_gets_not_modified() {
        let first = get("/console/js/app.js", &[]).await;
        let tag = first.headers()[ETAG].to_str().expect("ascii").to_owned();
        let again = get("/console/js/app.js", &[("if-none-match", &tag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let other = get("/console/js/app.js", &[("if-none-match", "\"0\"")]).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[test]
    fn the_shell_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(ASSETS[0].bytes).expect("utf-8");
        assert_eq!(ASSETS[0].path, "index.html");
        assert!(!html.contains("<script>") && !html.contains("style="));
        assert!(!html.contains("onclick="));
        assert!(html.contains(r#"<script type="module" src="/console/js/app.js">"#));
    }
}
