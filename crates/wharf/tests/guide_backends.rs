//! The guide's backend pages say exactly which capabilities each backend
//! declares: the overview's side-by-side table and each page's "declares" /
//! "does not declare" tables. These tests read those tables and compare them
//! with what each backend's `capabilities()` returns, so the pages cannot
//! drift from the code. Backends on a shared service skip (or fail under
//! `WHARF_REQUIRE_SERVICES=1`) when it is down.

use std::collections::BTreeSet;

use wharf::{Backend, Capabilities, Capability};

const OVERVIEW: &str = include_str!("../guide/backends.md");

/// Every backend the overview has a column for, by `Backend::name`.
const NAMES: [&str; 9] = [
    "memory",
    "broker",
    "remote",
    "nats",
    "nats-core",
    "redis",
    "redis-pubsub",
    "amqp",
    "postgres",
];

fn capability(name: &str) -> Capability {
    Capability::ALL
        .into_iter()
        .find(|c| c.as_str() == name)
        .unwrap_or_else(|| panic!("`{name}` is not a capability"))
}

/// The first `backticked` word of a table cell.
fn backticked(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let len = cell[start..].find('`')?;
    Some(&cell[start..start + len])
}

/// The last `backticked` word of a table cell.
fn last_backticked(cell: &str) -> Option<&str> {
    let end = cell.rfind('`')?;
    let start = cell[..end].rfind('`')? + 1;
    Some(&cell[start..end])
}

fn cells(line: &str) -> Vec<&str> {
    let line = line.trim().trim_start_matches('|').trim_end_matches('|');
    line.split('|').map(str::trim).collect()
}

/// The rows of the table that starts at or after `lines[from]`, without
/// its header and separator.
fn table_rows<'a>(lines: &[&'a str], from: usize) -> Vec<Vec<&'a str>> {
    let start = (from..lines.len())
        .find(|&i| lines[i].starts_with('|'))
        .expect("a table follows");
    lines[start..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| cells(l))
        .collect()
}

/// The overview's column for `name`: the capabilities marked `yes`.
fn overview_column(name: &str) -> Capabilities {
    let lines: Vec<&str> = OVERVIEW.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("| capability |"))
        .expect("the side-by-side table");
    let columns: Vec<&str> = cells(lines[header])
        .iter()
        .skip(1)
        .map(|c| last_backticked(c).expect("a backend name ending each header cell"))
        .collect();
    assert_eq!(columns, NAMES, "the overview's columns");
    let column = 1 + columns.iter().position(|c| *c == name).expect("a column");
    let mut seen = BTreeSet::new();
    let mut declared = Capabilities::empty();
    for row in table_rows(&lines, header) {
        let cap = capability(backticked(row[0]).expect("a capability name"));
        assert!(seen.insert(cap.as_str()), "{cap} listed twice");
        match row[column] {
            "yes" => declared = declared.with(cap),
            "—" => {}
            other => panic!("{name}/{cap}: cell `{other}` is neither `yes` nor `—`"),
        }
    }
    assert_eq!(seen.len(), Capability::ALL.len(), "a row per capability");
    declared
}

/// The capabilities in a page's table under the line
/// "**`name` declares:**" (or "does not declare:").
fn page_table(page: &str, name: &str, heading: &str) -> Capabilities {
    let lines: Vec<&str> = page.lines().collect();
    let marker = format!("**`{name}` {heading}:**");
    let at = lines
        .iter()
        .position(|l| l.trim() == marker)
        .unwrap_or_else(|| panic!("no line {marker}"));
    table_rows(&lines, at + 1)
        .iter()
        .map(|row| capability(backticked(row[0]).expect("a capability name")))
        .collect()
}

/// The overview's column and the page's two tables say what `backend`
/// declares, and the page accounts for every capability.
fn check(backend: &dyn Backend, page: &str) {
    let name = backend.name();
    let caps = backend.capabilities();
    let missing: Capabilities = Capability::ALL
        .into_iter()
        .filter(|c| !caps.contains(*c))
        .collect();
    assert_eq!(overview_column(name), caps, "{name}: the overview's column");
    assert_eq!(
        page_table(page, name, "declares"),
        caps,
        "{name}: the page's declared table"
    );
    assert_eq!(
        page_table(page, name, "does not declare"),
        missing,
        "{name}: the page's not-declared table"
    );
}

#[test]
fn the_overview_has_a_row_per_capability_and_a_column_per_backend() {
    // Also checked by every backend's test; this one runs without services.
    overview_column("memory");
}

#[tokio::test]
async fn the_memory_page_states_its_capabilities() {
    let backend = wharf::memory::MemoryBackend::new();
    check(&backend, include_str!("../guide/backends/memory.md"));
}

#[tokio::test]
async fn the_broker_page_states_its_capabilities() {
    let broker = wharf::broker::Broker::temporary().await.expect("a broker");
    check(&broker, include_str!("../guide/backends/broker.md"));
    broker.close().await.expect("close");
}

#[cfg(feature = "client")]
#[tokio::test]
async fn the_client_page_states_the_capabilities_a_server_reports() {
    let dir = std::env::temp_dir().join(wharf_testkit::unique_name("wharf-guide-remote"));
    let mut config = wharf_server::ServerConfig::new(&dir);
    config.listen = "127.0.0.1:0".parse().expect("an address");
    let server = wharf_server::Server::bind(config).await.expect("bind");
    let url = format!("http://{}", server.local_addr().expect("bound"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let client = wharf::client::Client::connect(&url, None)
        .await
        .expect("connect");
    check(&client, include_str!("../guide/backends/client.md"));
    client.close().await.expect("close");
    let _ = stop.send(());
    serving.await.expect("joined").expect("served");
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn the_nats_page_states_both_modes_capabilities() {
    use wharf::nats::{NatsBackend, NatsConfig, NatsCoreBackend};
    const URL: &str = "nats://127.0.0.1:4222";
    const PAGE: &str = include_str!("../guide/backends/nats.md");
    let ns = wharf_testkit::unique_name("guide").replace('-', "_");
    let config = NatsConfig::new(URL)
        .stream(ns.to_uppercase())
        .subject_prefix(ns.clone());
    let connect = NatsBackend::connect(config);
    let Some(nats) = wharf_testkit::service::connect_or_skip("nats", URL, connect).await else {
        return;
    };
    let core = NatsCoreBackend::connect(NatsConfig::new(URL).subject_prefix(format!("{ns}_core")))
        .await
        .expect("core NATS");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check(&nats, PAGE);
        check(&core, PAGE);
    }));
    core.close().await.expect("close");
    nats.delete_stream().await.expect("delete the stream");
    nats.close().await.expect("close");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn the_redis_page_states_both_modes_capabilities() {
    use wharf::redis::{RedisBackend, RedisConfig, RedisPubSubBackend};
    const URL: &str = "redis://127.0.0.1:6379";
    const PAGE: &str = include_str!("../guide/backends/redis.md");
    let config = RedisConfig::new(URL).key_prefix(wharf_testkit::unique_name("guide"));
    let connect = RedisBackend::connect(config.clone());
    let Some(redis) = wharf_testkit::service::connect_or_skip("redis", URL, connect).await else {
        return;
    };
    let pubsub = RedisPubSubBackend::connect(config)
        .await
        .expect("Redis Pub/Sub");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check(&redis, PAGE);
        check(&pubsub, PAGE);
    }));
    pubsub.close().await.expect("close");
    redis.delete_all().await.expect("delete the keys");
    redis.close().await.expect("close");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[cfg(feature = "amqp")]
#[tokio::test]
async fn the_amqp_page_states_its_capabilities() {
    use wharf::amqp::{AmqpBackend, AmqpConfig};
    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let config = AmqpConfig::new(URL).namespace(wharf_testkit::unique_name("guide"));
    let connect = AmqpBackend::connect(config);
    let Some(rabbit) = wharf_testkit::service::connect_or_skip("rabbitmq", URL, connect).await
    else {
        return;
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check(&rabbit, include_str!("../guide/backends/amqp.md"));
    }));
    rabbit.delete_declared().await.expect("delete the exchange");
    rabbit.close().await.expect("close");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn the_postgres_page_states_its_capabilities() {
    use wharf::postgres::{PostgresBackend, PostgresConfig};
    const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
    let schema = wharf_testkit::unique_name("guide").replace('-', "_");
    let connect = PostgresBackend::connect(PostgresConfig::new(URL).schema(schema));
    let Some(postgres) = wharf_testkit::service::connect_or_skip("postgres", URL, connect).await
    else {
        return;
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check(&postgres, include_str!("../guide/backends/postgres.md"));
    }));
    postgres.drop_schema().await.expect("drop the schema");
    postgres.close().await.expect("close");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
