//! The HTTP API's contract, checked by machines against a real `wharf serve`:
//! its `/openapi.json` passes an OpenAPI validator, and schemathesis finds no
//! server error, schema violation or undocumented status with every check.
//! The tools live in the repo's `.venv` (installed by `scripts/python-tools.sh`);
//! without them these tests skip, or fail under `WHARF_REQUIRE_SERVICES=1`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// `.venv/bin/NAME` at the repo root, if installed.
fn tool(name: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join(".venv/bin").join(name);
    if path.is_file() {
        return Some(path);
    }
    let why = format!("{} is missing: run scripts/python-tools.sh", path.display());
    assert!(
        !wharf_testkit::service::required(),
        "{why} (WHARF_REQUIRE_SERVICES=1)"
    );
    println!("skipped: {why}");
    None
}

async fn fetch_document(server: &common::Server, dir: &std::path::Path) -> PathBuf {
    let body = reqwest::get(format!("{}/openapi.json", server.url()))
        .await
        .expect("GET /openapi.json")
        .text()
        .await
        .expect("document text");
    let path = dir.join("openapi.json");
    std::fs::write(&path, body).expect("write the document");
    path
}

#[tokio::test]
async fn openapi_document_passes_an_openapi_validator() {
    let Some(validator) = tool("openapi-spec-validator") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(&dir.path().join("data"), None);
    let doc = fetch_document(&server, dir.path()).await;
    let out = Command::new(validator)
        .arg(&doc)
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        out.status.success(),
        "the document is invalid:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn server_conforms_to_its_openapi_document_under_schemathesis() {
    let Some(st) = tool("st") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(&dir.path().join("data"), None);
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openapi/schemathesis.toml");
    let started = Instant::now();
    // A fixed seed and a bounded number of examples per operation keep the
    // run repeatable and short; WHARF_SCHEMATHESIS_EXAMPLES raises the bound
    // for a deeper local run.
    let examples = std::env::var("WHARF_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "15".into());
    let out = Command::new(st)
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/openapi.json", server.url())])
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &examples])
        .args(["--seed", "18"])
        .args(["--workers", "1"])
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("schemathesis ran {:.1?}", started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}"
    );
}
