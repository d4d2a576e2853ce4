//! Helpers for tests that need a real service (NATS, Redis, RabbitMQ,
//! PostgreSQL): skip — or, under `WHARF_REQUIRE_SERVICES=1` (CI), fail —
//! when it is unreachable, and clean up shared servers even from `Drop`.

use std::fmt::Display;
use std::future::Future;

use wharf_core::Error;

/// Whether an unreachable service fails the test (`WHARF_REQUIRE_SERVICES=1`)
/// instead of skipping it.
pub fn required() -> bool {
    std::env::var("WHARF_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// Reports that `service` at `url` is unreachable: panics when
/// [`required`], otherwise prints `skipped: …` for the test log.
pub fn report_unreachable(service: &str, url: &str, error: &dyn Display) {
    if required() {
        panic!("{service} unreachable at {url}: {error} (WHARF_REQUIRE_SERVICES=1)");
    }
    println!("skipped: {service} unreachable at {url}: {error}");
}

/// Awaits `connect`; on [`Error::Unavailable`] or [`Error::Timeout`] reports
/// the service as [`report_unreachable`] and returns `None`; any other error fails
/// the test.
pub async fn connect_or_skip<B>(
    service: &str,
    url: &str,
    connect: impl Future<Output = Result<B, Error>>,
) -> Option<B> {
    match connect.await {
        Ok(b) => Some(b),
        Err(e) if e.is_transient() => {
            report_unreachable(service, url, &e);
            None
        }
        Err(e) => panic!("connecting to {service} at {url}: {e}"),
    }
}

/// Runs an async cleanup to completion on a thread and runtime of its own,
/// so it works in `Drop`, inside or outside a runtime, even while a test
/// unwinds. A panicking cleanup is reported, not propagated.
pub fn cleanup_blocking<F, Fut>(cleanup: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let joined = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        rt.block_on(cleanup());
    })
    .join();
    if joined.is_err() {
        eprintln!("cleanup thread panicked");
    }
}
