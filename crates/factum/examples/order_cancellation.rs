//! Order cancellation (seed 001): cancelling an order records `OrderCancelled`; a refund and a
//! notification react to it in separate handlers of one event processor. The payment gateway
//! fails twice and then succeeds, so the refund goes through on the third attempt, after
//! backing off. The mail server is down: the notification fails every attempt and is parked in
//! the processor's dead-letter stream without holding the refund up — and is replayed once the
//! mail server is back.
//!
//! `cargo run --example order_cancellation` runs it on the embedded store (`FACTUM_DATA_DIR`,
//! default `./factum-data`); `cargo test --example order_cancellation` runs its tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use factum::{
    CommandContext, Decider, EventProcessor, EventStore, HandlerError, RecordedEvent, Repository,
    RetryPolicy, handler_fn,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// What happens to an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum OrderEvent {
    OrderPlaced {
        customer: String,
        amount_cents: u64,
    },
    OrderCancelled {
        customer: String,
        amount_cents: u64,
        reason: String,
    },
    RefundIssued {
        refund_id: String,
        amount_cents: u64,
    },
}

/// What can be asked of an order.
#[derive(Clone, Debug, PartialEq)]
enum OrderCommand {
    Place { customer: String, amount_cents: u64 },
    Cancel { reason: String },
    RecordRefund { refund_id: String },
}

/// Why an order refuses.
#[derive(Debug, PartialEq, thiserror::Error)]
enum OrderError {
    #[error("no such order")]
    NotPlaced,
    #[error("the order was already placed")]
    AlreadyPlaced,
    #[error("the order is already cancelled")]
    AlreadyCancelled,
    #[error("only a cancelled order is refunded")]
    NotCancelled,
}

/// An order's state.
#[derive(Clone, Debug, Default, PartialEq)]
enum Order {
    #[default]
    New,
    Placed {
        customer: String,
        amount_cents: u64,
    },
    Cancelled {
        amount_cents: u64,
        refund_id: Option<String>,
    },
}

struct Orders;

impl Decider for Orders {
    type State = Order;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    const CATEGORY: &'static str = "order";

    fn initial_state(&self) -> Order {
        Order::New
    }

    fn decide(&self, order: &Order, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match (order, command) {
            (
                Order::New,
                OrderCommand::Place {
                    customer,
                    amount_cents,
                },
            ) => Ok(vec![OrderEvent::OrderPlaced {
                customer: customer.clone(),
                amount_cents: *amount_cents,
            }]),
            (_, OrderCommand::Place { .. }) => Err(OrderError::AlreadyPlaced),
            (
                Order::Placed {
                    customer,
                    amount_cents,
                },
                OrderCommand::Cancel { reason },
            ) => Ok(vec![OrderEvent::OrderCancelled {
                customer: customer.clone(),
                amount_cents: *amount_cents,
                reason: reason.clone(),
            }]),
            (Order::New, OrderCommand::Cancel { .. }) => Err(OrderError::NotPlaced),
            (Order::Cancelled { .. }, OrderCommand::Cancel { .. }) => {
                Err(OrderError::AlreadyCancelled)
            }
            (
                Order::Cancelled {
                    amount_cents,
                    refund_id: None,
                },
                OrderCommand::RecordRefund { refund_id },
            ) => Ok(vec![OrderEvent::RefundIssued {
                refund_id: refund_id.clone(),
                amount_cents: *amount_cents,
            }]),
            // Recorded already: a retried handler changes nothing.
            (Order::Cancelled { .. }, OrderCommand::RecordRefund { .. }) => Ok(vec![]),
            (_, OrderCommand::RecordRefund { .. }) => Err(OrderError::NotCancelled),
        }
    }

    fn evolve(&self, order: Order, event: &OrderEvent) -> Order {
        match event {
            OrderEvent::OrderPlaced {
                customer,
                amount_cents,
            } => Order::Placed {
                customer: customer.clone(),
                amount_cents: *amount_cents,
            },
            OrderEvent::OrderCancelled { amount_cents, .. } => Order::Cancelled {
                amount_cents: *amount_cents,
                refund_id: None,
            },
            OrderEvent::RefundIssued { refund_id, .. } => match order {
                Order::Cancelled { amount_cents, .. } => Order::Cancelled {
                    amount_cents,
                    refund_id: Some(refund_id.clone()),
                },
                other => other,
            },
        }
    }
}

/// A payment gateway that is unavailable for its first `failures` calls. Like real gateways it
/// takes an idempotency key: asking twice with the same key refunds once.
struct PaymentGateway {
    failures_left: AtomicU32,
    calls: AtomicU32,
    refunds: Mutex<HashMap<String, (String, u64)>>,
}

impl PaymentGateway {
    fn failing(failures: u32) -> Self {
        PaymentGateway {
            failures_left: AtomicU32::new(failures),
            calls: AtomicU32::new(0),
            refunds: Mutex::new(HashMap::new()),
        }
    }

    fn refund(&self, key: &str, order: &str, amount_cents: u64) -> Result<String, HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let down = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if down {
            return Err("payment gateway: 503 service unavailable".into());
        }
        let mut refunds = self.refunds.lock();
        let next = refunds.len() + 1;
        let (refund_id, _) = refunds
            .entry(key.to_owned())
            .or_insert_with(|| (format!("rf-{next}-{order}"), amount_cents));
        Ok(refund_id.clone())
    }
}

/// A mail server that is up or down.
#[derive(Default)]
struct Mailer {
    down: AtomicBool,
    sent: Mutex<Vec<String>>,
}

impl Mailer {
    fn send(&self, to: &str, text: String) -> Result<(), HandlerError> {
        if self.down.load(Ordering::SeqCst) {
            return Err("mail server: connection refused".into());
        }
        self.sent.lock().push(format!("to {to}: {text}"));
        Ok(())
    }
}

/// The order id of an event in stream `order-<id>`.
fn order_id(event: &RecordedEvent) -> String {
    event
        .stream
        .as_str()
        .strip_prefix("order-")
        .unwrap_or(event.stream.as_str())
        .to_owned()
}

#[derive(Deserialize)]
struct Cancelled {
    customer: String,
    amount_cents: u64,
}

/// The processor that reacts to cancellations: `refund` and `notify`, side by side.
fn cancellation_processor(
    store: Arc<dyn EventStore>,
    orders: Arc<Repository<Orders>>,
    gateway: Arc<PaymentGateway>,
    mailer: Arc<Mailer>,
    retry: RetryPolicy,
) -> anyhow::Result<EventProcessor> {
    let refund = handler_fn("refund", move |event: RecordedEvent| {
        let (orders, gateway) = (orders.clone(), gateway.clone());
        async move {
            let cancelled: Cancelled = serde_json::from_slice(&event.data)?;
            let order = order_id(&event);
            // The event id is the idempotency key: a retry never refunds twice.
            let refund_id =
                gateway.refund(&event.id.to_string(), &order, cancelled.amount_cents)?;
            orders
                .execute(
                    &order,
                    OrderCommand::RecordRefund { refund_id },
                    &CommandContext::caused_by(&event),
                )
                .await?;
            Ok(())
        }
    });
    let notify = handler_fn("notify", move |event: RecordedEvent| {
        let mailer = mailer.clone();
        async move {
            let cancelled: Cancelled = serde_json::from_slice(&event.data)?;
            mailer.send(
                &cancelled.customer,
                format!("your order {} is cancelled", order_id(&event)),
            )
        }
    });
    Ok(EventProcessor::builder("order-cancellation", store)
        .on("OrderCancelled", refund)
        .on("OrderCancelled", notify)
        .stream_prefixes(["order-"])
        .retry(retry)
        .build()?)
}

/// The seed's policy: three attempts, backing off exponentially, with jitter.
fn retry_policy(initial: Duration) -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        initial_delay: initial,
        multiplier: 2.0,
        max_delay: Duration::from_secs(5),
        jitter: true,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::var("FACTUM_DATA_DIR").unwrap_or_else(|_| "./factum-data".into());
    let engine = factum::Engine::open(&dir, factum::EngineOptions::default())?;
    let store: Arc<dyn EventStore> = Arc::new(engine.clone());
    let orders = Arc::new(Repository::new(store.clone(), Orders));
    let order = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    println!("order {order} on the embedded store in {dir}");

    let customer = CommandContext::new().by("ann@example.com");
    orders
        .execute(
            &order,
            OrderCommand::Place {
                customer: "ann@example.com".into(),
                amount_cents: 4_990,
            },
            &customer,
        )
        .await?;
    let cancelled = orders
        .execute(
            &order,
            OrderCommand::Cancel {
                reason: "changed my mind".into(),
            },
            &customer,
        )
        .await?;
    println!("  cancelled: {:?}", cancelled.events);

    // The gateway is down for two calls; the mail server is down altogether.
    let gateway = Arc::new(PaymentGateway::failing(2));
    let mailer = Arc::new(Mailer::default());
    mailer.down.store(true, Ordering::SeqCst);
    let processor = cancellation_processor(
        store.clone(),
        orders.clone(),
        gateway.clone(),
        mailer.clone(),
        retry_policy(Duration::from_millis(100)),
    )?;
    let started = Instant::now();
    let stats = processor.run_until(engine.head()).await?;
    println!(
        "  processed {} event(s) in {:?}: {} failed call(s), {} dead letter(s)",
        stats.events,
        started.elapsed(),
        stats.failures,
        stats.dead_lettered
    );
    println!(
        "  refund: {} call(s) to the gateway; the order is now {:?}",
        gateway.calls.load(Ordering::SeqCst),
        orders.load(&order).await?.state
    );
    for letter in processor.dead_letters().await? {
        println!(
            "  parked: handler '{}' on {} after {} attempts: {}",
            letter.handler, letter.event_type, letter.attempts, letter.error
        );
    }

    mailer.down.store(false, Ordering::SeqCst);
    let report = processor.replay_dead_letters().await?;
    println!(
        "  mail server back; replayed dead letters: {} resolved, {} failed",
        report.resolved, report.failed
    );
    for mail in mailer.sent.lock().iter() {
        println!("  sent {mail}");
    }
    engine.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use factum::testing::given;
    use factum::{Direction, MemoryStore, StreamName};

    fn placed() -> OrderEvent {
        OrderEvent::OrderPlaced {
            customer: "ann@example.com".into(),
            amount_cents: 1_000,
        }
    }

    fn cancelled() -> OrderEvent {
        OrderEvent::OrderCancelled {
            customer: "ann@example.com".into(),
            amount_cents: 1_000,
            reason: "late".into(),
        }
    }

    #[test]
    fn a_placed_order_can_be_cancelled_once() {
        given(Orders, [placed()])
            .when(OrderCommand::Cancel {
                reason: "late".into(),
            })
            .then([cancelled()]);
        given(Orders, [placed(), cancelled()])
            .when(OrderCommand::Cancel {
                reason: "again".into(),
            })
            .then_rejected(OrderError::AlreadyCancelled);
        given(Orders, [])
            .when(OrderCommand::Cancel {
                reason: "late".into(),
            })
            .then_rejected(OrderError::NotPlaced);
    }

    #[test]
    fn a_refund_is_recorded_once_and_only_for_a_cancelled_order() {
        let refund = || OrderCommand::RecordRefund {
            refund_id: "rf-1".into(),
        };
        given(Orders, [placed(), cancelled()])
            .when(refund())
            .then([OrderEvent::RefundIssued {
                refund_id: "rf-1".into(),
                amount_cents: 1_000,
            }]);
        let issued = OrderEvent::RefundIssued {
            refund_id: "rf-1".into(),
            amount_cents: 1_000,
        };
        given(Orders, [placed(), cancelled(), issued])
            .when(refund())
            .then([]);
        given(Orders, [placed()])
            .when(refund())
            .then_rejected(OrderError::NotCancelled);
    }

    struct World {
        store: Arc<dyn EventStore>,
        orders: Arc<Repository<Orders>>,
        gateway: Arc<PaymentGateway>,
        mailer: Arc<Mailer>,
        processor: EventProcessor,
    }

    fn world(store: Arc<dyn EventStore>, gateway_failures: u32, mail_down: bool) -> World {
        let orders = Arc::new(Repository::new(store.clone(), Orders));
        let gateway = Arc::new(PaymentGateway::failing(gateway_failures));
        let mailer = Arc::new(Mailer::default());
        mailer.down.store(mail_down, Ordering::SeqCst);
        let processor = cancellation_processor(
            store.clone(),
            orders.clone(),
            gateway.clone(),
            mailer.clone(),
            retry_policy(Duration::from_millis(5)),
        )
        .unwrap();
        World {
            store,
            orders,
            gateway,
            mailer,
            processor,
        }
    }

    async fn place_and_cancel(world: &World, order: &str) {
        let context = CommandContext::new().by("ann@example.com");
        world
            .orders
            .execute(
                order,
                OrderCommand::Place {
                    customer: "ann@example.com".into(),
                    amount_cents: 1_000,
                },
                &context,
            )
            .await
            .unwrap();
        world
            .orders
            .execute(
                order,
                OrderCommand::Cancel {
                    reason: "late".into(),
                },
                &context,
            )
            .await
            .unwrap();
    }

    async fn events_of(store: &Arc<dyn EventStore>, order: &str) -> Vec<RecordedEvent> {
        let stream = StreamName::user(format!("order-{order}")).unwrap();
        store
            .read_stream(&stream, 0, Direction::Forwards, 100)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_refund_succeeds_on_the_third_attempt_and_the_failed_notification_is_parked() {
        let w = world(Arc::new(MemoryStore::new()), 2, true);
        place_and_cancel(&w, "o-1").await;
        let stats = w.processor.run_until(w.store.head()).await.unwrap();

        // Two gateway failures and three mail failures; one dead letter, the notification's.
        assert_eq!(w.gateway.calls.load(Ordering::SeqCst), 3);
        assert_eq!(stats.failures, 2 + 3);
        assert_eq!(stats.dead_lettered, 1);
        let letters = w.processor.dead_letters().await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].handler, "notify");
        assert_eq!(letters[0].attempts, 3);
        assert!(letters[0].error.contains("connection refused"));

        // The refund went through although the notification failed; it was caused by the
        // cancellation and shares its correlation.
        let events = events_of(&w.store, "o-1").await;
        assert_eq!(events.len(), 3);
        assert_eq!(events[2].event_type, "RefundIssued");
        let refund = events[2].metadata_json();
        assert_eq!(refund["$causationId"], events[1].id.to_string());
        assert_eq!(
            refund["$correlationId"],
            events[1].metadata_json()["$correlationId"]
        );
        assert!(matches!(
            w.orders.load("o-1").await.unwrap().state,
            Order::Cancelled {
                refund_id: Some(_),
                ..
            }
        ));
        assert!(w.mailer.sent.lock().is_empty());

        // The mail server is back: the replay sends the notification, once.
        w.mailer.down.store(false, Ordering::SeqCst);
        let report = w.processor.replay_dead_letters().await.unwrap();
        assert_eq!((report.resolved, report.failed), (1, 0));
        assert!(w.processor.dead_letters().await.unwrap().is_empty());
        assert_eq!(w.mailer.sent.lock().len(), 1);
        assert_eq!(w.gateway.refunds.lock().len(), 1);
    }

    #[tokio::test]
    async fn a_refund_that_keeps_failing_does_not_block_the_notification() {
        let w = world(Arc::new(MemoryStore::new()), 10, false);
        place_and_cancel(&w, "o-2").await;
        let stats = w.processor.run_until(w.store.head()).await.unwrap();
        assert_eq!(stats.dead_lettered, 1);
        assert_eq!(
            w.processor.dead_letters().await.unwrap()[0].handler,
            "refund"
        );
        assert_eq!(w.mailer.sent.lock().len(), 1, "the customer was told");
        assert_eq!(events_of(&w.store, "o-2").await.len(), 2, "no refund yet");

        // Once the gateway recovers, the replay refunds — and only the refund handler runs.
        w.gateway.failures_left.store(0, Ordering::SeqCst);
        let report = w.processor.replay_dead_letters().await.unwrap();
        assert_eq!(report.resolved, 1);
        assert_eq!(events_of(&w.store, "o-2").await.len(), 3);
        assert_eq!(w.mailer.sent.lock().len(), 1, "no second notification");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn it_runs_on_the_embedded_store_and_does_not_handle_an_event_twice_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine =
                factum::Engine::open(dir.path(), factum::EngineOptions::default()).unwrap();
            let w = world(Arc::new(engine.clone()), 1, false);
            place_and_cancel(&w, "o-3").await;
            w.processor.run_until(engine.head()).await.unwrap();
            assert_eq!(w.mailer.sent.lock().len(), 1);
            engine.close().unwrap();
        }
        let engine = factum::Engine::open(dir.path(), factum::EngineOptions::default()).unwrap();
        let w = world(Arc::new(engine.clone()), 0, false);
        let stats = w.processor.run_until(engine.head()).await.unwrap();
        // The refund appended after the checkpoint is looked at, but nobody handles it.
        assert_eq!(w.mailer.sent.lock().len(), 0);
        assert_eq!(w.gateway.calls.load(Ordering::SeqCst), 0);
        assert!(stats.events <= 1);
        assert_eq!(events_of(&w.store, "o-3").await.len(), 3);
        engine.close().unwrap();
    }
}
