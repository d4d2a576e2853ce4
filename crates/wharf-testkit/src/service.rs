//! Helpers for tests that need a real service (NATS, Redis, RabbitMQ,
//! PostgreSQL): skip — or, under `WHARF_REQUIRE_SERVICES=1` (CI), fail —
//! when it is unreachable, clean up shared servers even from `Drop`, a
//! [`Namespace`] holding one such backend, and a [`ServiceFactory`] for
//! running the suites against such a service (with the suite's set-up
//! hooks: topics with settings, consumer processes behind a proxy).

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use wharf_core::{Backend, Error};

use crate::proxy::Proxy;
use crate::{BackendFactory, ConsumerProcess, TopicSettings, Unsupported};

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

/// A backend of a shared service in a namespace of its own (a stream, a key
/// prefix: whatever its config `C` names), for tests that need the concrete
/// backend type; an optional cleanup gets the config when it is dropped.
pub struct Namespace<C: Clone, B> {
    /// The config the backend was connected with.
    pub config: C,
    /// The backend.
    pub backend: B,
    cleanup: Option<fn(C)>,
}

impl<C: Clone, B> Namespace<C, B> {
    /// Connects with `config`; `None` after reporting `service` at `url`
    /// unreachable, as [`connect_or_skip`] does.
    pub async fn new<Fut>(
        service: &str,
        url: &str,
        config: C,
        connect: impl FnOnce(C) -> Fut,
    ) -> Option<Self>
    where
        Fut: Future<Output = Result<B, Error>>,
    {
        let backend = connect_or_skip(service, url, connect(config.clone())).await?;
        Some(Namespace {
            config,
            backend,
            cleanup: None,
        })
    }

    /// Runs `cleanup` with the config when the namespace is dropped (before
    /// the backend is; it runs in `Drop`: see [`cleanup_blocking`]).
    #[must_use]
    pub fn cleanup_on_drop(mut self, cleanup: fn(C)) -> Self {
        self.cleanup = Some(cleanup);
        self
    }
}

impl<C: Clone, B> Drop for Namespace<C, B> {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup {
            cleanup(self.config.clone());
        }
    }
}

type Connect<C> =
    Box<dyn Fn(C) -> BoxFuture<'static, Result<Arc<dyn Backend>, Error>> + Send + Sync>;
type WithSettings<C> = Box<dyn Fn(&C, &TopicSettings) -> Result<C, Unsupported> + Send + Sync>;
type AtUrl<C> = Box<dyn Fn(&str) -> C + Send + Sync>;

/// A [`BackendFactory`] for a backend on a shared service: every
/// [`open`](BackendFactory::open) connects with the same config (so restart
/// cases see their data again), and an optional cleanup gets the config
/// when the factory is dropped.
///
/// ```text
/// // crates/wharf-redis/tests/service/mod.rs
/// let factory = ServiceFactory::new("redis", &url(), unique_config(), RedisBackend::connect)
///     .await?
///     .cleanup_on_drop(delete_all_blocking);
/// ```
pub struct ServiceFactory<C: Clone + Send + Sync + 'static> {
    service: &'static str,
    url: String,
    config: C,
    connect: Connect<C>,
    cleanup: Option<Box<dyn Fn(C) + Send + Sync>>,
    with_settings: Option<WithSettings<C>>,
    at_url: Option<AtUrl<C>>,
    /// Configs the hooks connected with, cleaned up with `config`.
    extra: Mutex<Vec<C>>,
}

impl<C: Clone + Send + Sync + 'static> ServiceFactory<C> {
    /// Connects once with `config` to see that `service` at `url` is up
    /// (closing that backend again); returns `None` after reporting it
    /// unreachable as [`connect_or_skip`] does. Give each factory a config
    /// of its own (a unique namespace), as the services are shared.
    pub async fn new<B, F, Fut>(
        service: &'static str,
        url: &str,
        config: C,
        connect: F,
    ) -> Option<Self>
    where
        B: Backend + 'static,
        F: Fn(C) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<B, Error>> + Send + 'static,
    {
        let probe = connect_or_skip(service, url, connect(config.clone())).await?;
        if let Err(e) = probe.close().await {
            eprintln!("closing the probe connection to {service} failed: {e}");
        }
        let connect: Connect<C> = Box::new(move |config| {
            let connecting = connect(config);
            Box::pin(async move { Ok(Arc::new(connecting.await?) as Arc<dyn Backend>) })
        });
        Some(ServiceFactory {
            service,
            url: url.to_owned(),
            config,
            connect,
            cleanup: None,
            with_settings: None,
            at_url: None,
            extra: Mutex::default(),
        })
    }

    /// Runs `cleanup` with the config when the factory is dropped (it runs
    /// in `Drop`: see [`cleanup_blocking`]).
    #[must_use]
    pub fn cleanup_on_drop(mut self, cleanup: impl Fn(C) + Send + Sync + 'static) -> Self {
        self.cleanup = Some(Box::new(cleanup));
        self
    }

    /// Provides [`BackendFactory::open_topic_with`]: `config` makes, from
    /// the factory's config, one whose backend gives topics `settings` (a
    /// namespace of its own where the service applies them only when it
    /// creates one), or refuses with why. The topic is then made with
    /// `ensure_topic`; the config is cleaned up with the factory's.
    #[must_use]
    pub fn topics_with(
        mut self,
        config: impl Fn(&C, &TopicSettings) -> Result<C, Unsupported> + Send + Sync + 'static,
    ) -> Self {
        self.with_settings = Some(Box::new(config));
        self
    }

    /// Provides [`BackendFactory::open_consumer_process`]: `config` makes
    /// the factory's config with the service's URL replaced by the one
    /// given (a [`Proxy`]'s), whose connections are cut when the process
    /// is killed.
    #[must_use]
    pub fn consumer_processes(
        mut self,
        config: impl Fn(&str) -> C + Send + Sync + 'static,
    ) -> Self {
        self.at_url = Some(Box::new(config));
        self
    }

    /// Connects with `config`; `cleanup` records it to be cleaned up too.
    async fn connect_extra(&self, config: C, cleanup: bool) -> Arc<dyn Backend> {
        if cleanup {
            self.extra.lock().expect("lock").push(config.clone());
        }
        match (self.connect)(config).await {
            Ok(backend) => backend,
            Err(e) => panic!("connect to {}: {e}", self.service),
        }
    }
}

#[async_trait]
impl<C: Clone + Send + Sync + 'static> BackendFactory for ServiceFactory<C> {
    async fn open(&self) -> Arc<dyn Backend> {
        match (self.connect)(self.config.clone()).await {
            Ok(backend) => backend,
            Err(e) => panic!("connect to {}: {e}", self.service),
        }
    }

    async fn open_topic_with(
        &self,
        topic: &str,
        settings: &TopicSettings,
    ) -> Result<Arc<dyn Backend>, Unsupported> {
        let Some(with_settings) = &self.with_settings else {
            return Err(Unsupported::new(format!(
                "the {} factory makes no topics with settings",
                self.service
            )));
        };
        let config = with_settings(&self.config, settings)?;
        let backend = self.connect_extra(config, true).await;
        backend.ensure_topic(topic).await.expect("ensure_topic");
        Ok(backend)
    }

    async fn open_consumer_process(
        &self,
        _backend: &Arc<dyn Backend>,
    ) -> Result<ConsumerProcess, Unsupported> {
        let Some(at_url) = &self.at_url else {
            return Err(Unsupported::new(format!(
                "the {} factory opens no consumer processes",
                self.service
            )));
        };
        let (proxy, url) = Proxy::for_url(&self.url)
            .await
            .unwrap_or_else(|e| panic!("a proxy to {}: {e}", self.service));
        // The factory's own namespace (cleaned up with it) at the proxy's
        // URL, which is gone by the time the factory is dropped.
        let backend = self.connect_extra(at_url(&url), false).await;
        Ok(ConsumerProcess::through(backend, proxy))
    }
}

impl<C: Clone + Send + Sync + 'static> Drop for ServiceFactory<C> {
    fn drop(&mut self) {
        if let Some(cleanup) = &self.cleanup {
            cleanup(self.config.clone());
            let extra = std::mem::take(&mut *self.extra.lock().unwrap_or_else(|e| e.into_inner()));
            for config in extra {
                cleanup(config);
            }
        }
    }
}
