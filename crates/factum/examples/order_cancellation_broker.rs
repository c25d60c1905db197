//! Order cancellation (seed 001) across a broker: cancelling an order records
//! `OrderCancelled` in the order service; the payment service refunds it and the notification
//! service mails the customer — each on its own store, reached only through NATS JetStream,
//! RabbitMQ or Kafka. The refund travels back, and the order records it.
//!
//! The payment gateway times out twice before it takes the refund, and the mail server is
//! down for a second from the first mail on: each service retries on its own, the message waits on the broker
//! meanwhile, and neither holds the other up. However often a message comes, the refund is
//! issued once and the mail sent once.
//!
//! `cargo run -p factum --example order_cancellation_broker [-- rabbitmq | -- kafka]` runs it;
//! `cargo test -p factum --example order_cancellation_broker` runs its tests against all three
//! brokers.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use factum::{
    BusError, CommandBus, CommandContext, Consumer, Decider, Engine, EngineOptions, Envelope,
    EventStore, Payload, Relay, Repository, ToAggregate, TypeMap, headers,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use common::*;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OrderEvent {
    OrderPlaced {
        customer: String,
        cents: u64,
    },
    OrderCancelled {
        customer: String,
        cents: u64,
        reason: String,
    },
    RefundRecorded {
        refund: String,
    },
}

#[derive(Clone, Debug)]
pub enum OrderCommand {
    Place { customer: String, cents: u64 },
    Cancel { reason: String },
    RecordRefund { refund: String },
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("no such order")]
    NotPlaced,
    #[error("the order is already cancelled")]
    AlreadyCancelled,
    #[error("only a cancelled order is refunded")]
    NotCancelled,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Order {
    pub customer: String,
    pub cents: u64,
    pub cancelled: bool,
    pub refunds: Vec<String>,
}

pub struct Orders;

impl Decider for Orders {
    type State = Option<Order>;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    const CATEGORY: &'static str = "order";

    fn initial_state(&self) -> Option<Order> {
        None
    }

    fn decide(
        &self,
        order: &Option<Order>,
        command: &OrderCommand,
    ) -> Result<Vec<OrderEvent>, OrderError> {
        let placed = || order.as_ref().ok_or(OrderError::NotPlaced);
        Ok(vec![match command.clone() {
            OrderCommand::Place { customer, cents } => OrderEvent::OrderPlaced { customer, cents },
            OrderCommand::Cancel { reason } => {
                let order = placed()?;
                if order.cancelled {
                    return Err(OrderError::AlreadyCancelled);
                }
                OrderEvent::OrderCancelled {
                    customer: order.customer.clone(),
                    cents: order.cents,
                    reason,
                }
            }
            OrderCommand::RecordRefund { refund } => {
                if !placed()?.cancelled {
                    return Err(OrderError::NotCancelled);
                }
                OrderEvent::RefundRecorded { refund }
            }
        }])
    }

    fn evolve(&self, order: Option<Order>, event: &OrderEvent) -> Option<Order> {
        let mut order = order.unwrap_or_default();
        match event {
            OrderEvent::OrderPlaced { customer, cents } => {
                order.customer = customer.clone();
                order.cents = *cents;
            }
            OrderEvent::OrderCancelled { .. } => order.cancelled = true,
            OrderEvent::RefundRecorded { refund } => order.refunds.push(refund.clone()),
        }
        Some(order)
    }
}

/// One refund per order: issuing it again changes nothing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RefundEvent {
    RefundIssued {
        order: String,
        refund: String,
        cents: u64,
    },
}

pub struct Refunds;

impl Decider for Refunds {
    type State = bool;
    /// (order, cents)
    type Command = (String, u64);
    type Event = RefundEvent;
    type Error = std::convert::Infallible;
    const CATEGORY: &'static str = "refund";

    fn initial_state(&self) -> bool {
        false
    }

    fn decide(
        &self,
        issued: &bool,
        (order, cents): &(String, u64),
    ) -> Result<Vec<RefundEvent>, Self::Error> {
        Ok(if *issued {
            Vec::new()
        } else {
            vec![RefundEvent::RefundIssued {
                order: order.clone(),
                refund: format!("R-{order}"),
                cents: *cents,
            }]
        })
    }

    fn evolve(&self, _: bool, _: &RefundEvent) -> bool {
        true
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MailEvent {
    MailSent { to: String, text: String },
}

pub struct Mails;

impl Decider for Mails {
    type State = bool;
    /// (to, text)
    type Command = (String, String);
    type Event = MailEvent;
    type Error = std::convert::Infallible;
    const CATEGORY: &'static str = "mail";

    fn initial_state(&self) -> bool {
        false
    }

    fn decide(
        &self,
        sent: &bool,
        (to, text): &(String, String),
    ) -> Result<Vec<MailEvent>, Self::Error> {
        Ok(if *sent {
            Vec::new()
        } else {
            vec![MailEvent::MailSent {
                to: to.clone(),
                text: text.clone(),
            }]
        })
    }

    fn evolve(&self, _: bool, _: &MailEvent) -> bool {
        true
    }
}

/// How the story ended.
#[derive(Debug, PartialEq)]
pub struct Ending {
    /// The order as the order service has it.
    pub order: Order,
    /// Refunds issued by the payment service.
    pub refunds_issued: usize,
    /// Calls to the payment gateway (two timed out).
    pub gateway_calls: u32,
    /// Mails sent by the notification service.
    pub mails_sent: usize,
    /// Tries to reach the mail server (it was down at first).
    pub mail_tries_over_one: bool,
}

fn engine(dirs: &mut Vec<tempfile::TempDir>) -> Result<Arc<dyn EventStore>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let engine = Engine::open(dir.path(), EngineOptions::default()).map_err(|e| e.to_string())?;
    dirs.push(dir);
    Ok(Arc::new(engine))
}

/// Events of `event_type` in `store`.
async fn count(store: &dyn EventStore, event_type: &str) -> usize {
    let events = store
        .read_all(0, factum::Direction::Forwards, 10_000)
        .await
        .unwrap_or_default();
    events.iter().filter(|e| e.event_type == event_type).count()
}

pub async fn story(broker: Broker) -> Result<Ending, String> {
    let wiring = Wiring::new(broker, "cancel");
    let subscriptions: [(&str, &[&str]); 3] = [
        ("orders", &["refund"]),
        ("payments", &["order"]),
        ("notifications", &["order"]),
    ];
    wiring.prepare(&subscriptions).await?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut dirs = Vec::new();
    let (order_store, payment_store, mail_store) =
        (engine(&mut dirs)?, engine(&mut dirs)?, engine(&mut dirs)?);
    let fail = |e: &dyn std::fmt::Display| e.to_string();

    // Orders: cancellations leave; refunds come back and are recorded.
    let orders = Arc::new(Repository::new(order_store.clone(), Orders));
    let order_bus = CommandBus::builder()
        .handle::<ToAggregate<Orders>, _>(orders.clone().handler())
        .build()
        .map_err(|e| fail(&e))?;
    let out = TypeMap::new().map("OrderCancelled", "order.cancelled", Payload::Data);
    let relay = Relay::builder("orders-out", order_store.clone())
        .translator(out)
        .build()
        .map_err(|e| fail(&e))?;
    tasks.push(spawn_relay(relay, wiring.publisher(), &stopped));
    let consumer = Consumer::builder("orders-in", order_store.clone())
        .bus(order_bus)
        .on_aggregate::<Orders, _>("payment.refunded", |m| {
            let body: serde_json::Value = m.json()?;
            let order = body["order"].as_str().ok_or("no order")?.to_owned();
            let refund = body["refund"].as_str().ok_or("no refund")?.to_owned();
            Ok((order, OrderCommand::RecordRefund { refund }))
        })
        .build()
        .map_err(|e| fail(&e))?;
    tasks.push(spawn_consumer(
        consumer,
        wiring.source("orders", subscriptions[0].1),
        &stopped,
    ));

    // Payments: a gateway in front of the refunds, timing out on its first two calls.
    let refunds = Arc::new(Repository::new(payment_store.clone(), Refunds));
    let gateway_calls = Arc::new(AtomicU32::new(0));
    let calls = gateway_calls.clone();
    let refund_handler = refunds.handler();
    let payment_bus = CommandBus::builder()
        .handle::<ToAggregate<Refunds>, _>(tower::service_fn(
            move |envelope: Envelope<ToAggregate<Refunds>>| {
                let mut handler = refund_handler.clone();
                let call = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if call < 2 {
                        return Err(BusError::Failed("payment gateway timed out".into()));
                    }
                    tower::Service::call(&mut handler, envelope).await
                }
            },
        ))
        .build()
        .map_err(|e| fail(&e))?;
    let out = TypeMap::new().map("RefundIssued", "payment.refunded", Payload::Data);
    let relay = Relay::builder("payments-out", payment_store.clone())
        .translator(out)
        .build()
        .map_err(|e| fail(&e))?;
    tasks.push(spawn_relay(relay, wiring.publisher(), &stopped));
    let consumer = Consumer::builder("payments-in", payment_store.clone())
        .bus(payment_bus)
        .on_aggregate::<Refunds, _>("order.cancelled", |m| {
            let body: serde_json::Value = m.json()?;
            let order = header(m, headers::STREAM)?
                .strip_prefix("order-")
                .ok_or("not an order")?
                .to_owned();
            Ok((
                order.clone(),
                (order, body["cents"].as_u64().ok_or("no amount")?),
            ))
        })
        .build()
        .map_err(|e| fail(&e))?;
    tasks.push(spawn_consumer(
        consumer,
        wiring.source("payments", subscriptions[1].1),
        &stopped,
    ));

    // Notifications: the mail server is down for a second from the first mail on (however
    // long the broker takes to hand over that first message, the first try fails).
    let mails = Arc::new(Repository::new(mail_store.clone(), Mails));
    let mail_handler = mails.handler();
    let down_until = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mail_tries = Arc::new(AtomicU32::new(0));
    let tries = mail_tries.clone();
    let mail_bus = CommandBus::builder()
        .handle::<ToAggregate<Mails>, _>(tower::service_fn(
            move |envelope: Envelope<ToAggregate<Mails>>| {
                let mut handler = mail_handler.clone();
                tries.fetch_add(1, Ordering::SeqCst);
                let down_until =
                    *down_until.get_or_init(|| Instant::now() + Duration::from_secs(1));
                async move {
                    if Instant::now() < down_until {
                        return Err(BusError::Failed("mail server down".into()));
                    }
                    tower::Service::call(&mut handler, envelope).await
                }
            },
        ))
        .build()
        .map_err(|e| fail(&e))?;
    let consumer = Consumer::builder("notifications-in", mail_store.clone())
        .bus(mail_bus)
        .on_aggregate::<Mails, _>("order.cancelled", |m| {
            let body: serde_json::Value = m.json()?;
            let customer = body["customer"].as_str().ok_or("no customer")?.to_owned();
            let text = format!(
                "Your order was cancelled: {}",
                body["reason"].as_str().unwrap_or("")
            );
            Ok((m.id.clone(), (customer, text)))
        })
        .build()
        .map_err(|e| fail(&e))?;
    tasks.push(spawn_consumer(
        consumer,
        wiring.source("notifications", subscriptions[2].1),
        &stopped,
    ));

    // The story.
    let user = CommandContext::new().by("ann");
    let place = OrderCommand::Place {
        customer: "ann@example.com".into(),
        cents: 4_500,
    };
    orders
        .execute("o-1", place, &user)
        .await
        .map_err(|e| fail(&e))?;
    let cancel = OrderCommand::Cancel {
        reason: "changed my mind".into(),
    };
    orders
        .execute("o-1", cancel, &user)
        .await
        .map_err(|e| fail(&e))?;

    let until = Instant::now() + Duration::from_secs(30);
    let order = loop {
        let order = orders
            .load("o-1")
            .await
            .map_err(|e| fail(&e))?
            .state
            .unwrap_or_default();
        let mailed = count(mail_store.as_ref(), "MailSent").await > 0;
        if (!order.refunds.is_empty() && mailed) || Instant::now() > until {
            break order;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ending = Ending {
        order,
        refunds_issued: count(payment_store.as_ref(), "RefundIssued").await,
        gateway_calls: gateway_calls.load(Ordering::SeqCst),
        mails_sent: count(mail_store.as_ref(), "MailSent").await,
        mail_tries_over_one: mail_tries.load(Ordering::SeqCst) > 1,
    };
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    wiring
        .clean_up(&["orders", "payments", "notifications"])
        .await;
    Ok(ending)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let broker = broker_from_args()?;
    println!("order, payment and notification services over {broker:?}");
    let ending = story(broker).await?;
    println!(
        "order o-1: cancelled = {}, refunds recorded = {:?}",
        ending.order.cancelled, ending.order.refunds
    );
    println!(
        "payments: {} refund issued after {} gateway calls (two timed out)",
        ending.refunds_issued, ending.gateway_calls
    );
    println!(
        "notifications: {} mail sent once the mail server was back",
        ending.mails_sent
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Ending {
        Ending {
            order: Order {
                customer: "ann@example.com".into(),
                cents: 4_500,
                cancelled: true,
                refunds: vec!["R-o-1".into()],
            },
            refunds_issued: 1,
            gateway_calls: 3,
            mails_sent: 1,
            mail_tries_over_one: true,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_nats_the_cancelled_order_is_refunded_once_and_mailed_once() {
        if reachable("NATS", &nats_url()).await {
            assert_eq!(
                story(Broker::Nats).await.expect("the story runs"),
                expected()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_rabbitmq_the_cancelled_order_is_refunded_once_and_mailed_once() {
        if reachable("RabbitMQ", &rabbitmq_url()).await {
            assert_eq!(
                story(Broker::RabbitMq).await.expect("the story runs"),
                expected()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_kafka_the_cancelled_order_is_refunded_once_and_mailed_once() {
        if reachable("Kafka", &kafka_brokers()).await {
            assert_eq!(
                story(Broker::Kafka).await.expect("the story runs"),
                expected()
            );
        }
    }
}
