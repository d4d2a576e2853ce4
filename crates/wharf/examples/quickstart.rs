//! Quick start: publish typed messages to the embedded durable broker and
//! consume them in a consumer group; then the same code on the in-memory
//! backend — handlers only ever see `Arc<dyn Backend>`.
//!
//! Run with `cargo run -p wharf --example quickstart`.

use std::sync::Arc;

use wharf::broker::Broker;
use wharf::memory::MemoryBackend;
use wharf::{Backend, Json, Message, SubscribeOptions};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OrderCreated {
    order_id: u64,
    amount_cents: u64,
}

async fn round_trip(backend: Arc<dyn Backend>) -> Result<(), wharf::Error> {
    // A consumer group: every group gets each message once.
    let mut orders = backend
        .subscribe(SubscribeOptions::new("orders.*").group("billing"))
        .await?;

    for order_id in 1..=3 {
        let msg = Message::builder()
            .key(format!("customer-{}", order_id % 2))
            .header("source", "quickstart")
            .encode(
                &Json,
                &OrderCreated {
                    order_id,
                    amount_cents: 1_000 * order_id,
                },
            )?
            .build();
        let receipt = backend.publish("orders.created", msg).await?;
        println!(
            "[{}] published order {order_id} to partition {} at offset {:?}",
            backend.name(),
            receipt.partition,
            receipt.offset
        );
    }

    for _ in 0..3 {
        let delivery = orders.next().await.expect("subscription is open")?;
        let order: OrderCreated = delivery.message().decode(&Json)?;
        println!(
            "[{}] billing got {order:?} from {} (attempt {})",
            backend.name(),
            delivery.topic(),
            delivery.attempt()
        );
        delivery.ack().await?;
    }
    backend.close().await
}

#[tokio::main]
async fn main() -> Result<(), wharf::Error> {
    // Durable: data lives in a directory (a temporary one here), fsync'd before each ack.
    let broker = Broker::temporary().await?;
    round_trip(Arc::new(broker)).await?;
    // Same code, no durability, no disk.
    round_trip(Arc::new(MemoryBackend::new())).await?;
    println!("round trips complete");
    Ok(())
}

// `cargo test` runs the example too (`test = true` in Cargo.toml).
#[test]
fn runs_to_completion() {
    main().expect("the example runs to completion");
}
