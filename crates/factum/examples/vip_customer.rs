//! VIP customers (seed 003): given a customer with two orders, when they place a third, they
//! become a VIP; when a customer becomes a VIP, they get a congratulation e-mail.
//!
//! Placing an order records `OrderCreated` in the order's stream. An event processor updates
//! the customer's order history (its own aggregate, so orders and histories never contend),
//! which records `CustomerBecameVip` with the third order. Another handler of the same processor
//! sends the congratulation through an [`Inbox`], so it goes out exactly once even when the
//! event is handled twice — after a crash before the checkpoint, by a replay, or by two
//! deliveries at once.
//!
//! `cargo run --example vip_customer` runs it on the embedded store (`FACTUM_DATA_DIR`, default
//! `./factum-data`); `cargo test --example vip_customer` runs its tests.

use std::collections::HashMap;
use std::sync::Arc;

use factum::{
    CommandContext, Decider, EventProcessor, EventStore, Inbox, RecordedEvent, Repository,
    handler_fn,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// An order, as far as this example needs one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum OrderEvent {
    OrderCreated {
        customer_id: String,
        amount_cents: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
struct CreateOrder {
    customer_id: String,
    amount_cents: u64,
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("the order exists already")]
struct OrderExists;

struct Orders;

impl Decider for Orders {
    type State = bool;
    type Command = CreateOrder;
    type Event = OrderEvent;
    type Error = OrderExists;
    const CATEGORY: &'static str = "order";

    fn initial_state(&self) -> bool {
        false
    }

    fn decide(&self, exists: &bool, command: &CreateOrder) -> Result<Vec<OrderEvent>, OrderExists> {
        if *exists {
            return Err(OrderExists);
        }
        Ok(vec![OrderEvent::OrderCreated {
            customer_id: command.customer_id.clone(),
            amount_cents: command.amount_cents,
        }])
    }

    fn evolve(&self, _: bool, _: &OrderEvent) -> bool {
        true
    }
}

/// A customer's order history: the aggregate that knows when a customer becomes a VIP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum HistoryEvent {
    OrderRecorded { order_id: String, amount_cents: u64 },
    CustomerBecameVip { customer_id: String },
}

#[derive(Clone, Debug, PartialEq)]
struct RecordOrder {
    customer_id: String,
    order_id: String,
    amount_cents: u64,
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum Never {}

/// The orders a customer placed, and whether they are a VIP.
#[derive(Clone, Debug, Default, PartialEq)]
struct History {
    orders: Vec<String>,
    vip: bool,
}

/// How many orders make a VIP.
const VIP_ORDERS: usize = 3;

struct Histories;

impl Decider for Histories {
    type State = History;
    type Command = RecordOrder;
    type Event = HistoryEvent;
    type Error = Never;
    const CATEGORY: &'static str = "history";

    fn initial_state(&self) -> History {
        History::default()
    }

    fn decide(&self, history: &History, command: &RecordOrder) -> Result<Vec<HistoryEvent>, Never> {
        if history.orders.contains(&command.order_id) {
            return Ok(vec![]); // recorded already
        }
        let mut events = vec![HistoryEvent::OrderRecorded {
            order_id: command.order_id.clone(),
            amount_cents: command.amount_cents,
        }];
        if history.orders.len() + 1 == VIP_ORDERS && !history.vip {
            events.push(HistoryEvent::CustomerBecameVip {
                customer_id: command.customer_id.clone(),
            });
        }
        Ok(events)
    }

    fn evolve(&self, mut history: History, event: &HistoryEvent) -> History {
        match event {
            HistoryEvent::OrderRecorded { order_id, .. } => history.orders.push(order_id.clone()),
            HistoryEvent::CustomerBecameVip { .. } => history.vip = true,
        }
        history
    }
}

/// Customers' names and addresses.
struct Customers(HashMap<String, (String, String)>);

/// The mail that went out.
#[derive(Default)]
struct Mailer(Mutex<Vec<String>>);

/// The id after `<category>-` in an event's stream.
fn id_of(event: &RecordedEvent) -> String {
    let stream = event.stream.as_str();
    stream
        .split_once('-')
        .map_or(stream, |(_, id)| id)
        .to_owned()
}

/// The processor: `update_customer_history` on `OrderCreated`, `congratulate_vip_customer` on
/// `CustomerBecameVip` (once per event, through the inbox).
fn vip_processor(
    name: &str,
    store: Arc<dyn EventStore>,
    inbox: Arc<Inbox>,
    customers: Arc<Customers>,
    mailer: Arc<Mailer>,
) -> anyhow::Result<EventProcessor> {
    let histories = Arc::new(Repository::new(store.clone(), Histories));
    let update_history = handler_fn("update_customer_history", move |event: RecordedEvent| {
        let histories = histories.clone();
        async move {
            #[derive(Deserialize)]
            struct Created {
                customer_id: String,
                amount_cents: u64,
            }
            let created: Created = serde_json::from_slice(&event.data)?;
            let command = RecordOrder {
                customer_id: created.customer_id.clone(),
                order_id: id_of(&event),
                amount_cents: created.amount_cents,
            };
            histories
                .execute(
                    &created.customer_id,
                    command,
                    &CommandContext::caused_by(&event),
                )
                .await?;
            Ok(())
        }
    });
    let congratulate = handler_fn("congratulate_vip_customer", move |event: RecordedEvent| {
        let (inbox, customers, mailer) = (inbox.clone(), customers.clone(), mailer.clone());
        async move {
            let customer_id = id_of(&event);
            let (name, address) = customers
                .0
                .get(&customer_id)
                .cloned()
                .ok_or_else(|| format!("unknown customer '{customer_id}'"))?;
            inbox
                .once(&event, || async {
                    mailer
                        .0
                        .lock()
                        .push(format!("to {address}: Congratulations {name}!"));
                    Ok::<_, factum::HandlerError>(())
                })
                .await?;
            Ok(())
        }
    });
    Ok(EventProcessor::builder(name, store)
        .on("OrderCreated", update_history)
        .on("CustomerBecameVip", congratulate)
        .stream_prefixes(["order-", "history-"])
        .build()?)
}

/// Ann and Bob, with ids ending in `suffix`.
fn customers_with(suffix: &str) -> Arc<Customers> {
    Arc::new(Customers(HashMap::from([
        (
            format!("ann{suffix}"),
            ("Ann".to_owned(), "ann@example.com".to_owned()),
        ),
        (
            format!("bob{suffix}"),
            ("Bob".to_owned(), "bob@example.com".to_owned()),
        ),
    ])))
}

#[cfg(test)]
fn customers() -> Arc<Customers> {
    customers_with("")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::var("FACTUM_DATA_DIR").unwrap_or_else(|_| "./factum-data".into());
    let engine = factum::Engine::open(&dir, factum::EngineOptions::default())?;
    let store: Arc<dyn EventStore> = Arc::new(engine.clone());
    let run = &uuid::Uuid::now_v7().simple().to_string()[20..];
    println!("orders of run {run} on the embedded store in {dir}");

    // Customers new to this data directory, so that every run shows a first VIP.
    let suffix = format!(".{run}");
    let first = engine.head();
    let orders = Repository::new(store.clone(), Orders);
    for (i, name) in ["ann", "bob", "ann", "ann", "ann"].into_iter().enumerate() {
        let customer_id = format!("{name}{suffix}");
        let order_id = format!("{run}.{i}");
        orders
            .execute(
                &order_id,
                CreateOrder {
                    customer_id: customer_id.clone(),
                    amount_cents: 2_500,
                },
                &CommandContext::new().by(name),
            )
            .await?;
        println!("  {customer_id} placed order {order_id}");
    }

    let mailer = Arc::new(Mailer::default());
    let inbox = Arc::new(Inbox::open(store.clone(), "vip-congratulations").await?);
    let processor = vip_processor(
        "vip",
        store.clone(),
        inbox.clone(),
        customers_with(&suffix),
        mailer.clone(),
    )?;
    // The history appends events while the processor runs: run until they are handled too.
    while processor.run_until(engine.head()).await?.events > 0 {}
    for mail in mailer.0.lock().iter() {
        println!("  sent {mail}");
    }

    // Handle this run's events again, as a processor that lost its checkpoint would.
    let again_name = format!("vip-again-{run}");
    if let Some(before) = first.checked_sub(1) {
        store.save_checkpoint(&again_name, before).await?;
    }
    let again = vip_processor(
        &again_name,
        store.clone(),
        inbox,
        customers_with(&suffix),
        mailer.clone(),
    )?;
    while again.run_until(engine.head()).await?.events > 0 {}
    println!(
        "  after handling every event a second time: {} mail(s) in all",
        mailer.0.lock().len()
    );
    engine.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use factum::testing::given;
    use factum::{Direction, MemoryStore, StreamName};

    fn recorded(order_id: &str) -> HistoryEvent {
        HistoryEvent::OrderRecorded {
            order_id: order_id.into(),
            amount_cents: 100,
        }
    }

    fn record(order_id: &str) -> RecordOrder {
        RecordOrder {
            customer_id: "ann".into(),
            order_id: order_id.into(),
            amount_cents: 100,
        }
    }

    #[test]
    fn the_third_order_makes_a_vip() {
        given(Histories, [recorded("o-1"), recorded("o-2")])
            .when(record("o-3"))
            .then([
                recorded("o-3"),
                HistoryEvent::CustomerBecameVip {
                    customer_id: "ann".into(),
                },
            ]);
        given(Histories, [recorded("o-1")])
            .when(record("o-2"))
            .then([recorded("o-2")]);
    }

    #[test]
    fn a_vip_does_not_become_one_again_and_an_order_is_recorded_once() {
        let vip = HistoryEvent::CustomerBecameVip {
            customer_id: "ann".into(),
        };
        given(
            Histories,
            [
                recorded("o-1"),
                recorded("o-2"),
                recorded("o-3"),
                vip.clone(),
            ],
        )
        .when(record("o-4"))
        .then([recorded("o-4")]);
        given(Histories, [recorded("o-1"), recorded("o-2")])
            .when(record("o-2"))
            .then([]);
    }

    async fn place(store: &Arc<dyn EventStore>, order_id: &str, customer_id: &str) {
        Repository::new(store.clone(), Orders)
            .execute(
                order_id,
                CreateOrder {
                    customer_id: customer_id.into(),
                    amount_cents: 100,
                },
                &CommandContext::new(),
            )
            .await
            .unwrap();
    }

    async fn drain(processor: &EventProcessor, store: &Arc<dyn EventStore>) {
        while processor.run_until(store.head()).await.unwrap().events > 0 {}
    }

    #[tokio::test]
    async fn a_third_order_sends_one_congratulation_even_when_handled_twice() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
        let mailer = Arc::new(Mailer::default());
        let inbox = Arc::new(Inbox::open(store.clone(), "congrats").await.unwrap());
        let processor = vip_processor(
            "vip",
            store.clone(),
            inbox.clone(),
            customers(),
            mailer.clone(),
        )
        .unwrap();
        place(&store, "o-1", "ann").await;
        place(&store, "o-2", "ann").await;
        place(&store, "o-3", "bob").await;
        drain(&processor, &store).await;
        assert!(mailer.0.lock().is_empty(), "two orders are not enough");

        place(&store, "o-4", "ann").await;
        drain(&processor, &store).await;
        assert_eq!(
            *mailer.0.lock(),
            vec!["to ann@example.com: Congratulations Ann!".to_owned()]
        );
        // The VIP event was caused by the order's event.
        let history = store
            .read_stream(
                &StreamName::user("history-ann").unwrap(),
                0,
                Direction::Forwards,
                10,
            )
            .await
            .unwrap();
        let vip = history.last().unwrap();
        assert_eq!(vip.event_type, "CustomerBecameVip");
        let order = store
            .read_stream(
                &StreamName::user("order-o-4").unwrap(),
                0,
                Direction::Forwards,
                1,
            )
            .await
            .unwrap();
        assert_eq!(vip.metadata_json()["$causationId"], order[0].id.to_string());

        // Every event handled again from the start, by a processor without a checkpoint:
        // histories record nothing new, and no second mail goes out.
        let again = vip_processor(
            "vip-again",
            store.clone(),
            inbox,
            customers(),
            mailer.clone(),
        )
        .unwrap();
        drain(&again, &store).await;
        assert_eq!(mailer.0.lock().len(), 1);
        assert_eq!(
            store
                .read_stream(
                    &StreamName::user("history-ann").unwrap(),
                    0,
                    Direction::Forwards,
                    10
                )
                .await
                .unwrap()
                .len(),
            history.len()
        );

        // A fifth order does not make Ann a VIP again.
        place(&store, "o-5", "ann").await;
        drain(&processor, &store).await;
        assert_eq!(mailer.0.lock().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn two_deliveries_at_once_and_a_restart_still_send_one_mail() {
        let dir = tempfile::tempdir().unwrap();
        let engine = factum::Engine::open(dir.path(), factum::EngineOptions::default()).unwrap();
        let store: Arc<dyn EventStore> = Arc::new(engine.clone());
        for order in ["o-1", "o-2", "o-3"] {
            place(&store, order, "bob").await;
        }
        let mailer = Arc::new(Mailer::default());
        let inbox = Arc::new(Inbox::open(store.clone(), "congrats").await.unwrap());
        // Two processors racing over the same events, sharing the inbox.
        let a = vip_processor(
            "a",
            store.clone(),
            inbox.clone(),
            customers(),
            mailer.clone(),
        )
        .unwrap();
        let b = vip_processor(
            "b",
            store.clone(),
            inbox.clone(),
            customers(),
            mailer.clone(),
        )
        .unwrap();
        tokio::join!(drain(&a, &store), drain(&b, &store));
        assert_eq!(mailer.0.lock().len(), 1);
        engine.close().unwrap();
        drop((a, b, inbox, store));

        // After a restart the inbox remembers, read back from its stream.
        let engine = factum::Engine::open(dir.path(), factum::EngineOptions::default()).unwrap();
        let store: Arc<dyn EventStore> = Arc::new(engine.clone());
        let inbox = Arc::new(Inbox::open(store.clone(), "congrats").await.unwrap());
        let fresh =
            vip_processor("fresh", store.clone(), inbox, customers(), mailer.clone()).unwrap();
        drain(&fresh, &store).await;
        assert_eq!(mailer.0.lock().len(), 1);
        engine.close().unwrap();
    }
}
