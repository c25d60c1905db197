//! Order saga (seed 004): three services, each with its own event store, connected only
//! through a broker (NATS JetStream, RabbitMQ or Kafka).
//!
//! - **orders** records orders. Its saga, `order-fulfilment`, drives each order: placed →
//!   reserve stock → take payment → confirm. A refused payment releases the stock and rejects
//!   the order; no payment answer before the deadline cancels the order and releases the stock.
//! - **stock** reserves and releases stock per product.
//! - **payments** takes payments; it refuses amounts over 1,000, and never answers for the
//!   customer `slow-bank`.
//!
//! Each service publishes what others need to know with a relay (the stored event is the
//! outbox; an explicit type map says what leaves) and takes what it needs from the others with
//! an idempotent consumer, which turns each message into a command on one of its aggregates.
//!
//! `cargo run -p factum --example order_saga` runs it over NATS;
//! `cargo run -p factum --example order_saga -- rabbitmq` over RabbitMQ, `-- kafka` over Kafka
//! (the brokers from `FACTUM_TEST_NATS` / `FACTUM_TEST_RABBITMQ` / `FACTUM_TEST_KAFKA`, default
//! on 127.0.0.1); `cargo test -p factum --example order_saga` runs its tests against all three.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use factum::{
    BusError, CommandBus, CommandContext, Consumer, Decider, Engine, EngineOptions, EventStore,
    IncomingMessage, Payload, RecordedEvent, Relay, Repository, Saga, SagaManager, SagaStep,
    ToAggregate, TypeMap, headers,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use common::*;

// ---------------------------------------------------------------- orders

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum OrderStatus {
    #[default]
    New,
    Placed,
    Confirmed,
    Rejected(String),
    Cancelled(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OrderEvent {
    OrderPlaced {
        customer: String,
        product: String,
        qty: u32,
        cents: u64,
    },
    StockRequested {
        product: String,
        qty: u32,
    },
    StockReserved,
    StockUnavailable,
    PaymentRequested {
        customer: String,
        cents: u64,
    },
    PaymentTaken,
    PaymentRejected {
        reason: String,
    },
    StockReleaseRequested {
        product: String,
    },
    OrderConfirmed,
    OrderRejected {
        reason: String,
    },
    OrderCancelled {
        reason: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OrderCommand {
    Place {
        customer: String,
        product: String,
        qty: u32,
        cents: u64,
    },
    RequestStock,
    RecordStock {
        reserved: bool,
    },
    RequestPayment,
    RecordPayment {
        rejected: Option<String>,
    },
    RequestRelease,
    Confirm,
    Reject {
        reason: String,
    },
    Cancel {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("the order was already placed")]
    AlreadyPlaced,
    #[error("no such order")]
    NotPlaced,
    #[error("the order is already closed ({0:?})")]
    Closed(OrderStatus),
}

#[derive(Clone, Debug, Default)]
pub struct Order {
    pub status: OrderStatus,
    customer: String,
    product: String,
    qty: u32,
    cents: u64,
}

pub struct Orders;

impl Decider for Orders {
    type State = Order;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    const CATEGORY: &'static str = "order";

    fn initial_state(&self) -> Order {
        Order::default()
    }

    fn decide(&self, order: &Order, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderCommand as C;
        use OrderEvent as E;
        match (&order.status, command) {
            (
                OrderStatus::New,
                C::Place {
                    customer,
                    product,
                    qty,
                    cents,
                },
            ) => Ok(vec![E::OrderPlaced {
                customer: customer.clone(),
                product: product.clone(),
                qty: *qty,
                cents: *cents,
            }]),
            (_, C::Place { .. }) => Err(OrderError::AlreadyPlaced),
            (OrderStatus::New, _) => Err(OrderError::NotPlaced),
            // Stock is released whatever became of the order.
            (_, C::RequestRelease) => Ok(vec![E::StockReleaseRequested {
                product: order.product.clone(),
            }]),
            (OrderStatus::Placed, command) => Ok(vec![match command.clone() {
                C::RequestStock => E::StockRequested {
                    product: order.product.clone(),
                    qty: order.qty,
                },
                C::RecordStock { reserved: true } => E::StockReserved,
                C::RecordStock { reserved: false } => E::StockUnavailable,
                C::RequestPayment => E::PaymentRequested {
                    customer: order.customer.clone(),
                    cents: order.cents,
                },
                C::RecordPayment { rejected: None } => E::PaymentTaken,
                C::RecordPayment {
                    rejected: Some(reason),
                } => E::PaymentRejected { reason },
                C::Confirm => E::OrderConfirmed,
                C::Reject { reason } => E::OrderRejected { reason },
                C::Cancel { reason } => E::OrderCancelled { reason },
                C::Place { .. } | C::RequestRelease => unreachable!("matched above"),
            }]),
            (closed, _) => Err(OrderError::Closed(closed.clone())),
        }
    }

    fn evolve(&self, mut order: Order, event: &OrderEvent) -> Order {
        match event {
            OrderEvent::OrderPlaced {
                customer,
                product,
                qty,
                cents,
            } => {
                order.status = OrderStatus::Placed;
                order.customer = customer.clone();
                order.product = product.clone();
                order.qty = *qty;
                order.cents = *cents;
            }
            OrderEvent::OrderConfirmed => order.status = OrderStatus::Confirmed,
            OrderEvent::OrderRejected { reason } => {
                order.status = OrderStatus::Rejected(reason.clone())
            }
            OrderEvent::OrderCancelled { reason } => {
                order.status = OrderStatus::Cancelled(reason.clone())
            }
            _ => {}
        }
        order
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Stage {
    #[default]
    Reserving,
    Paying,
    Finished,
}

/// The process of one order, as pure functions: what to ask next, what to undo.
pub struct OrderFulfilment {
    pub payment_deadline: Duration,
}

/// A command of the saga: to its own order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ToOrder {
    pub order: String,
    pub command: OrderCommand,
}

impl Saga for OrderFulfilment {
    const NAME: &'static str = "order-fulfilment";
    type State = Stage;
    type Command = ToOrder;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        event
            .stream
            .as_str()
            .strip_prefix("order-")
            .map(str::to_owned)
    }

    fn on_event(&self, stage: &Stage, event: &RecordedEvent) -> Option<SagaStep<Stage, ToOrder>> {
        let order = self.correlate(event)?;
        let to = |command| ToOrder {
            order: order.clone(),
            command,
        };
        use OrderCommand as C;
        Some(match event.event_type.as_str() {
            "OrderPlaced" => SagaStep::to(Stage::Reserving).send(to(C::RequestStock)),
            "StockReserved" => SagaStep::to(Stage::Paying)
                .send(to(C::RequestPayment))
                .schedule("payment", self.payment_deadline),
            "StockUnavailable" => SagaStep::to(Stage::Finished)
                .send(to(C::Reject {
                    reason: "out of stock".into(),
                }))
                .done(),
            "PaymentTaken" if *stage == Stage::Paying => SagaStep::to(Stage::Finished)
                .cancel("payment")
                .send(to(C::Confirm))
                .done(),
            "PaymentRejected" if *stage == Stage::Paying => {
                let data: serde_json::Value = serde_json::from_slice(&event.data).ok()?;
                let reason = format!("payment rejected: {}", data["reason"].as_str()?);
                SagaStep::to(Stage::Finished)
                    .cancel("payment")
                    .send(to(C::RequestRelease))
                    .send(to(C::Reject { reason }))
                    .done()
            }
            _ => return None,
        })
    }

    fn on_deadline(&self, stage: &Stage, _: &str, order: &str) -> Option<SagaStep<Stage, ToOrder>> {
        (*stage == Stage::Paying).then(|| {
            let to = |command| ToOrder {
                order: order.to_owned(),
                command,
            };
            SagaStep::to(Stage::Finished)
                .send(to(OrderCommand::RequestRelease))
                .send(to(OrderCommand::Cancel {
                    reason: "no payment answer in time".into(),
                }))
                .done()
        })
    }
}

// ---------------------------------------------------------------- stock

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StockEvent {
    StockReceived { qty: u32 },
    StockReserved { order: String, qty: u32 },
    StockUnavailable { order: String },
    StockReleased { order: String, qty: u32 },
}

#[derive(Clone, Debug)]
pub enum StockCommand {
    Receive { qty: u32 },
    Reserve { order: String, qty: u32 },
    Release { order: String },
}

#[derive(Clone, Debug, Default)]
pub struct StockLevel {
    pub available: u32,
    reserved: std::collections::HashMap<String, u32>,
}

pub struct Stock;

impl Decider for Stock {
    type State = StockLevel;
    type Command = StockCommand;
    type Event = StockEvent;
    type Error = std::convert::Infallible;
    const CATEGORY: &'static str = "stock";

    fn initial_state(&self) -> StockLevel {
        StockLevel::default()
    }

    fn decide(
        &self,
        level: &StockLevel,
        command: &StockCommand,
    ) -> Result<Vec<StockEvent>, Self::Error> {
        Ok(match command.clone() {
            StockCommand::Receive { qty } => vec![StockEvent::StockReceived { qty }],
            StockCommand::Reserve { order, qty } if qty <= level.available => {
                vec![StockEvent::StockReserved { order, qty }]
            }
            StockCommand::Reserve { order, .. } => vec![StockEvent::StockUnavailable { order }],
            StockCommand::Release { order } => match level.reserved.get(&order) {
                Some(&qty) => vec![StockEvent::StockReleased { order, qty }],
                None => Vec::new(),
            },
        })
    }

    fn evolve(&self, mut level: StockLevel, event: &StockEvent) -> StockLevel {
        match event {
            StockEvent::StockReceived { qty } => level.available += qty,
            StockEvent::StockReserved { order, qty } => {
                level.available -= qty;
                level.reserved.insert(order.clone(), *qty);
            }
            StockEvent::StockReleased { order, qty } => {
                level.available += qty;
                level.reserved.remove(order);
            }
            StockEvent::StockUnavailable { .. } => {}
        }
        level
    }
}

// ---------------------------------------------------------------- payments

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PaymentEvent {
    PaymentTaken { order: String, cents: u64 },
    PaymentRejected { order: String, reason: String },
    PaymentPending { order: String },
}

pub struct Payments;

impl Decider for Payments {
    type State = bool;
    /// (order, customer, cents)
    type Command = (String, String, u64);
    type Event = PaymentEvent;
    type Error = std::convert::Infallible;
    const CATEGORY: &'static str = "payment";

    fn initial_state(&self) -> bool {
        false
    }

    fn decide(
        &self,
        taken: &bool,
        (order, customer, cents): &(String, String, u64),
    ) -> Result<Vec<PaymentEvent>, Self::Error> {
        let order = order.clone();
        Ok(if *taken {
            Vec::new()
        } else if customer == "slow-bank" {
            vec![PaymentEvent::PaymentPending { order }]
        } else if *cents > 100_000 {
            vec![PaymentEvent::PaymentRejected {
                order,
                reason: "card declined".into(),
            }]
        } else {
            vec![PaymentEvent::PaymentTaken {
                order,
                cents: *cents,
            }]
        })
    }

    fn evolve(&self, taken: bool, event: &PaymentEvent) -> bool {
        taken || matches!(event, PaymentEvent::PaymentTaken { .. })
    }
}

/// The order id a message is about: its stream `…-{order}` for orders, its `order` field for
/// the others.
fn order_of(message: &IncomingMessage) -> Result<String, String> {
    let body: serde_json::Value = message.json()?;
    match body["order"].as_str() {
        Some(order) => Ok(order.to_owned()),
        None => Ok(header(message, headers::STREAM)?
            .strip_prefix("order-")
            .ok_or("not an order's message")?
            .to_owned()),
    }
}

/// The three services, running until dropped or stopped.
pub struct Shop {
    pub orders: Arc<Repository<Orders>>,
    pub stock: Arc<Repository<Stock>>,
    pub fulfilment: Arc<SagaManager<OrderFulfilment>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    wiring: Wiring,
    _dirs: Vec<tempfile::TempDir>,
}

const SERVICES: [&str; 3] = ["orders", "stock", "payments"];

impl Shop {
    /// Starts the three services, each on its own embedded store, connected by `broker`.
    pub async fn start(broker: Broker, payment_deadline: Duration) -> Result<Shop, String> {
        let wiring = Wiring::new(broker, "saga");
        let subscriptions: [(&str, &[&str]); 3] = [
            ("orders", &["stock", "payment"]),
            ("stock", &["order"]),
            ("payments", &["order"]),
        ];
        wiring.prepare(&subscriptions).await?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut dirs = Vec::new();
        let mut store = || -> Result<Arc<dyn EventStore>, String> {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let engine =
                Engine::open(dir.path(), EngineOptions::default()).map_err(|e| e.to_string())?;
            dirs.push(dir);
            Ok(Arc::new(engine))
        };
        let (order_store, stock_store, payment_store) = (store()?, store()?, store()?);

        // orders: what it asks of the others leaves; their answers come back as commands.
        let orders = Arc::new(Repository::new(order_store.clone(), Orders));
        let order_bus = CommandBus::builder()
            .handle::<ToAggregate<Orders>, _>(orders.clone().handler())
            .build()
            .map_err(|e| e.to_string())?;
        let out = TypeMap::new()
            .map("StockRequested", "stock.requested", Payload::Data)
            .map(
                "StockReleaseRequested",
                "stock.release_requested",
                Payload::Data,
            )
            .map("PaymentRequested", "payment.requested", Payload::Data);
        let relay = Relay::builder("orders-out", order_store.clone())
            .stream_prefixes(["order-"])
            .translator(out)
            .build()
            .map_err(|e| e.to_string())?;
        tasks.push(spawn_relay(relay, wiring.publisher(), &stopped));
        let record = |command: fn(&IncomingMessage) -> Result<OrderCommand, String>| {
            move |message: &IncomingMessage| Ok((order_of(message)?, command(message)?))
        };
        let consumer = Consumer::builder("orders-in", order_store.clone())
            .bus(order_bus.clone())
            .on_aggregate::<Orders, _>(
                "stock.reserved",
                record(|_| Ok(OrderCommand::RecordStock { reserved: true })),
            )
            .on_aggregate::<Orders, _>(
                "stock.unavailable",
                record(|_| Ok(OrderCommand::RecordStock { reserved: false })),
            )
            .on_aggregate::<Orders, _>(
                "payment.taken",
                record(|_| Ok(OrderCommand::RecordPayment { rejected: None })),
            )
            .on_aggregate::<Orders, _>(
                "payment.rejected",
                record(|m| {
                    let body: serde_json::Value = m.json()?;
                    let reason = body["reason"].as_str().unwrap_or("no reason").to_owned();
                    Ok(OrderCommand::RecordPayment {
                        rejected: Some(reason),
                    })
                }),
            )
            .build()
            .map_err(|e| e.to_string())?;
        tasks.push(spawn_consumer(
            consumer,
            wiring.source("orders", subscriptions[0].1),
            &stopped,
        ));
        let fulfilment = Arc::new(SagaManager::new(
            OrderFulfilment { payment_deadline },
            order_store.clone(),
            move |ToOrder { order, command }: ToOrder, context: CommandContext| {
                let bus = order_bus.clone();
                async move {
                    match bus
                        .send(ToAggregate::<Orders>::new(order, command), context)
                        .await
                    {
                        Ok(_) => Ok(()),
                        // An answer that comes after the order closed changes nothing.
                        Err(e) if e.rejection::<OrderError>().is_some() => Ok(()),
                        Err(e) => Err::<(), BusError>(e),
                    }
                }
            },
        ));
        let manager = fulfilment.clone();
        tasks.push(spawn_until(&stopped, |shutdown| async move {
            if let Err(e) = manager.run(shutdown).await {
                eprintln!("saga stopped: {e}");
            }
        }));

        // stock
        let stock = Arc::new(Repository::new(stock_store.clone(), Stock));
        let stock_bus = CommandBus::builder()
            .handle::<ToAggregate<Stock>, _>(stock.clone().handler())
            .build()
            .map_err(|e| e.to_string())?;
        let out = TypeMap::new()
            .map("StockReserved", "stock.reserved", Payload::Data)
            .map("StockUnavailable", "stock.unavailable", Payload::Data);
        let relay = Relay::builder("stock-out", stock_store.clone())
            .stream_prefixes(["stock-"])
            .translator(out)
            .build()
            .map_err(|e| e.to_string())?;
        tasks.push(spawn_relay(relay, wiring.publisher(), &stopped));
        let consumer = Consumer::builder("stock-in", stock_store.clone())
            .bus(stock_bus)
            .on_aggregate::<Stock, _>("stock.requested", |m| {
                let body: serde_json::Value = m.json()?;
                let product = body["product"].as_str().ok_or("no product")?.to_owned();
                let qty = body["qty"].as_u64().ok_or("no qty")? as u32;
                Ok((
                    product,
                    StockCommand::Reserve {
                        order: order_of(m)?,
                        qty,
                    },
                ))
            })
            .on_aggregate::<Stock, _>("stock.release_requested", |m| {
                let body: serde_json::Value = m.json()?;
                let product = body["product"].as_str().ok_or("no product")?.to_owned();
                Ok((
                    product,
                    StockCommand::Release {
                        order: order_of(m)?,
                    },
                ))
            })
            .build()
            .map_err(|e| e.to_string())?;
        tasks.push(spawn_consumer(
            consumer,
            wiring.source("stock", subscriptions[1].1),
            &stopped,
        ));

        // payments
        let payments = Arc::new(Repository::new(payment_store.clone(), Payments));
        let payment_bus = CommandBus::builder()
            .handle::<ToAggregate<Payments>, _>(payments.handler())
            .build()
            .map_err(|e| e.to_string())?;
        let out = TypeMap::new()
            .map("PaymentTaken", "payment.taken", Payload::Data)
            .map("PaymentRejected", "payment.rejected", Payload::Data);
        let relay = Relay::builder("payments-out", payment_store.clone())
            .stream_prefixes(["payment-"])
            .translator(out)
            .build()
            .map_err(|e| e.to_string())?;
        tasks.push(spawn_relay(relay, wiring.publisher(), &stopped));
        let consumer = Consumer::builder("payments-in", payment_store.clone())
            .bus(payment_bus)
            .on_aggregate::<Payments, _>("payment.requested", |m| {
                let body: serde_json::Value = m.json()?;
                let customer = body["customer"].as_str().ok_or("no customer")?.to_owned();
                let cents = body["cents"].as_u64().ok_or("no amount")?;
                let order = order_of(m)?;
                Ok((order.clone(), (order, customer, cents)))
            })
            .build()
            .map_err(|e| e.to_string())?;
        tasks.push(spawn_consumer(
            consumer,
            wiring.source("payments", subscriptions[2].1),
            &stopped,
        ));

        Ok(Shop {
            orders,
            stock,
            fulfilment,
            stop,
            tasks,
            wiring,
            _dirs: dirs,
        })
    }

    pub async fn receive(&self, product: &str, qty: u32) {
        self.stock
            .execute(
                product,
                StockCommand::Receive { qty },
                &CommandContext::new().by("warehouse"),
            )
            .await
            .expect("stock received");
    }

    pub async fn place(&self, order: &str, customer: &str, product: &str, qty: u32, cents: u64) {
        let place = OrderCommand::Place {
            customer: customer.into(),
            product: product.into(),
            qty,
            cents,
        };
        self.orders
            .execute(order, place, &CommandContext::new().by(customer))
            .await
            .expect("order placed");
    }

    /// Waits until `order` is no longer open (at most `patience`); returns its status.
    pub async fn outcome(&self, order: &str, patience: Duration) -> OrderStatus {
        let until = tokio::time::Instant::now() + patience;
        loop {
            let status = self
                .orders
                .load(order)
                .await
                .expect("order loads")
                .state
                .status;
            if status != OrderStatus::Placed || tokio::time::Instant::now() >= until {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn available(&self, product: &str) -> u32 {
        self.stock
            .load(product)
            .await
            .expect("stock loads")
            .state
            .available
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.wiring.clean_up(&SERVICES).await;
    }
}

/// How the story ended.
#[derive(Debug, PartialEq)]
pub struct Ending {
    /// Each order and its status.
    pub orders: Vec<(String, OrderStatus)>,
    /// Widgets available at the end.
    pub widgets_left: u32,
}

/// The story: four orders, four endings.
pub async fn story(broker: Broker) -> Result<Ending, String> {
    // The payment deadline: longer than an answer takes (on Kafka, the groups form first).
    let shop = Shop::start(broker, broker.settle_time()).await?;
    shop.receive("widget", 10).await;
    let orders = [
        ("o-1", "ann", 3, 4_500),       // confirmed
        ("o-2", "bob", 2, 500_000),     // payment rejected: stock released, order rejected
        ("o-3", "slow-bank", 4, 2_000), // no payment answer: cancelled, stock released
        ("o-4", "cy", 50, 1_000),       // out of stock: rejected
    ];
    for (order, customer, qty, cents) in orders {
        shop.place(order, customer, "widget", qty, cents).await;
    }
    let mut outcomes = Vec::new();
    for (order, ..) in orders {
        let status = shop.outcome(order, Duration::from_secs(30)).await;
        outcomes.push((order.to_owned(), status));
    }
    // The releases travel too: wait until the stock is back to 10 - 3.
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while shop.available("widget").await != 7 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let widgets_left = shop.available("widget").await;
    shop.stop().await;
    Ok(Ending {
        orders: outcomes,
        widgets_left,
    })
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let broker = broker_from_args()?;
    println!(
        "three services over {broker:?}; the payment deadline is {:?}",
        broker.settle_time()
    );
    let ending = story(broker).await?;
    for (order, status) in &ending.orders {
        println!("{order}: {status:?}");
    }
    println!("widgets left: {} of 10 (3 sold)", ending.widgets_left);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Ending {
        Ending {
            orders: vec![
                ("o-1".into(), OrderStatus::Confirmed),
                (
                    "o-2".into(),
                    OrderStatus::Rejected("payment rejected: card declined".into()),
                ),
                (
                    "o-3".into(),
                    OrderStatus::Cancelled("no payment answer in time".into()),
                ),
                ("o-4".into(), OrderStatus::Rejected("out of stock".into())),
            ],
            widgets_left: 7,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_nats_every_order_ends_as_it_should_and_the_stock_comes_back() {
        if reachable("NATS", &nats_url()).await {
            assert_eq!(
                story(Broker::Nats).await.expect("the story runs"),
                expected()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_rabbitmq_every_order_ends_as_it_should_and_the_stock_comes_back() {
        if reachable("RabbitMQ", &rabbitmq_url()).await {
            assert_eq!(
                story(Broker::RabbitMq).await.expect("the story runs"),
                expected()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_kafka_every_order_ends_as_it_should_and_the_stock_comes_back() {
        if reachable("Kafka", &kafka_brokers()).await {
            assert_eq!(
                story(Broker::Kafka).await.expect("the story runs"),
                expected()
            );
        }
    }
}
