//! Quick start: publish typed messages and consume them in a consumer group.
//!
//! Run with `cargo run -p wharf --example quickstart`.

use std::sync::Arc;

use wharf::memory::MemoryBackend;
use wharf::{Backend, Json, Message, SubscribeOptions};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OrderCreated {
    order_id: u64,
    amount_cents: u64,
}

#[tokio::main]
async fn main() -> Result<(), wharf::Error> {
    // Any backend works behind `Arc<dyn Backend>`; the in-memory one needs no setup.
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());

    // A consumer group: every group gets each message once.
    let mut orders = backend
        .subscribe(SubscribeOptions::new("orders.*").group("billing"))
        .await?;

    for order_id in 1..=3 {
        let msg = Message::builder()
            .key(format!("customer-{}", order_id % 2))
            .header("source", "quickstart")
            .encode(&Json, &OrderCreated { order_id, amount_cents: 1_000 * order_id })?
            .build();
        let receipt = backend.publish("orders.created", msg).await?;
        println!("published order {order_id} at offset {:?}", receipt.offset);
    }

    for _ in 0..3 {
        let delivery = orders.next().await.expect("subscription is open")?;
        let order: OrderCreated = delivery.message().decode(&Json)?;
        println!(
            "billing got {order:?} from {} (attempt {})",
            delivery.topic(),
            delivery.attempt()
        );
        delivery.ack().await?;
    }

    backend.close().await?;
    println!("round trip complete");
    Ok(())
}
