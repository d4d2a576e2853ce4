//! An order service, top to bottom: it consumes `orders.placed`, charges the
//! customer, and announces `orders.confirmed` — with retries for a flaky
//! payment gateway, a dead-letter queue for orders that can never succeed,
//! and deduplication so a re-sent order is not charged twice.
//!
//! ```text
//! cargo run -p wharf --features router --example order_service
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf::memory::MemoryBackend;
use wharf::router::dead_letter::DeadLetterLayer;
use wharf::router::dedup::{DedupLayer, MemoryDedupStore};
use wharf::router::retry::{ExponentialBackoff, RetryLayer};
use wharf::router::timeout::TimeoutLayer;
use wharf::router::{
    typed, CancellationToken, DefaultLayer, HandlerError, Outcome, Request, Router, ServiceBuilder,
};
use wharf::{header, Backend, Json, Message, StartPosition, SubscribeOptions};

/// What the shop front publishes.
#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
    customer: String,
    amount_cents: u64,
}

/// What we publish once the customer has been charged.
#[derive(Debug, Serialize, Deserialize)]
struct OrderConfirmed {
    order_id: u64,
}

/// A pretend payment gateway: it times out on the first try for some
/// orders (a *retryable* failure) and remembers whom it charged.
#[derive(Default)]
struct PaymentGateway {
    attempts: Mutex<HashSet<u64>>,
    charged: Mutex<Vec<u64>>,
}

impl PaymentGateway {
    async fn charge(&self, order: &OrderPlaced) -> Result<(), &'static str> {
        let first_try = self.attempts.lock().expect("lock").insert(order.order_id);
        if first_try && order.order_id.is_multiple_of(2) {
            return Err("payment gateway timed out");
        }
        self.charged.lock().expect("lock").push(order.order_id);
        Ok(())
    }
}

/// The business logic. It only says what happened; the layers around it
/// decide what to do about failures.
async fn handle_order(
    order: OrderPlaced,
    req: Request,
    payments: Arc<PaymentGateway>,
) -> Result<Outcome, HandlerError> {
    // An order that can never succeed: a *permanent* error (dead-lettered).
    if order.amount_cents == 0 {
        return Err(HandlerError::permanent(format!(
            "order {} has no amount",
            order.order_id
        )));
    }
    // A failure that may go away: a *retryable* error (retried).
    payments
        .charge(&order)
        .await
        .map_err(HandlerError::retryable)?;
    // Announce it; the trace context and correlation id are carried over.
    let confirmed = Message::builder()
        .key(order.customer.clone())
        .encode(
            &Json,
            &OrderConfirmed {
                order_id: order.order_id,
            },
        )?
        .build();
    req.publish("orders.confirmed", confirmed).await?;
    Ok(Outcome::Ack)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. A backend. Swap this line for the embedded broker or NATS later.
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());

    // 2. The handler, wrapped in middleware. Read the stack outside-in: each
    //    message is traced and counted, then dead-lettered if it fails for
    //    good, retried if it fails for now, skipped if already processed,
    //    and given at most 5 s per attempt.
    let payments = Arc::new(PaymentGateway::default());
    let p = payments.clone();
    let handler = typed(Json, move |order: OrderPlaced, req: Request| {
        handle_order(order, req, p.clone())
    });
    let service = ServiceBuilder::new()
        .layer(DefaultLayer::new())
        .layer(DeadLetterLayer::new())
        .layer(
            RetryLayer::new()
                .max_attempts(4)
                .backoff(ExponentialBackoff::new(
                    Duration::from_millis(20),
                    Duration::from_secs(1),
                )),
        )
        .layer(DedupLayer::new(
            Arc::new(MemoryDedupStore::new()),
            Duration::from_secs(24 * 3600),
        ))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .service(handler);

    // 3. Bind it to a subscription: consumer group "billing".
    let orders = SubscribeOptions::new("orders.placed")
        .group("billing")
        .start(StartPosition::Earliest);
    let router = Router::new(backend.clone())
        .shutdown_timeout(Duration::from_secs(10))
        .route(orders, service);

    // Watch what comes out, as other services would.
    let mut confirmed = backend
        .subscribe(SubscribeOptions::new("orders.confirmed").start(StartPosition::Earliest))
        .await?;
    let mut dead = backend
        .subscribe(SubscribeOptions::new("dlq.orders.placed").start(StartPosition::Earliest))
        .await?;

    // 4. Run it until we say stop (in a real service: on Ctrl-C).
    let stop = CancellationToken::new();
    let running = tokio::spawn(router.run(stop.clone()));

    // The shop front places four orders; order 1 is sent twice.
    let place = |id: u64, amount: u64| {
        Message::builder()
            .key(format!("customer-{id}"))
            .encode(
                &Json,
                &OrderPlaced {
                    order_id: id,
                    customer: format!("customer-{id}"),
                    amount_cents: amount,
                },
            )
            .map(|b| b.build())
    };
    let order1 = place(1, 1999)?;
    backend.publish("orders.placed", order1.clone()).await?;
    backend.publish("orders.placed", place(2, 4500)?).await?;
    backend.publish("orders.placed", place(3, 0)?).await?;
    backend.publish("orders.placed", order1).await?; // a duplicate: same message id
    backend.publish("orders.placed", place(4, 1200)?).await?;

    for _ in 0..3 {
        let d = confirmed.next().await.ok_or("stream ended")??;
        let c: OrderConfirmed = d.message().decode(&Json)?;
        println!("confirmed order {}", c.order_id);
        d.ack().await?;
    }
    let d = dead.next().await.ok_or("stream ended")??;
    println!(
        "dead-lettered: {}",
        d.message().headers().get(header::DLQ_REASON).unwrap_or("?")
    );
    d.ack().await?;

    // 5. Graceful shutdown: stop fetching, finish what is in flight, report.
    stop.cancel();
    let report = running.await??;
    // The dead-lettered order was parked by the DeadLetterLayer, so the
    // router acked all five deliveries and released none.
    println!(
        "router handled {}, acked {}, released {}",
        report.handled(),
        report.acked(),
        report.released()
    );
    println!("charged: {:?}", payments.charged.lock().expect("lock"));
    Ok(())
}

// `cargo test` runs the example too (`test = true` in Cargo.toml).
#[test]
fn runs_to_completion() {
    main().expect("the example runs to completion");
}
