//! Stock allocation (seed 003): a product holds batches of stock — in the warehouse, or on a
//! ship with an ETA — and allocates order lines to them. Commands go through the command bus
//! (`CreateBatch`, `Allocate`, `ChangeBatchQuantity`); events go to an event processor:
//!
//! - allocation prefers a batch in stock, then the one arriving first;
//! - when no batch can take an order line, the product records `OutOfStock`, and a handler
//!   sends a notification;
//! - when a batch's quantity drops below what is allocated from it, the newest allocations are
//!   taken back (`Deallocated`), and a handler sends `Allocate` again for each, so the orders
//!   land on other batches.
//!
//! The product (one stream per SKU) is the consistency boundary, so every command names the
//! SKU it is about: allocating never takes more than a product has.
//!
//! A projection keeps a `batches` table in a read model, so that a question across products —
//! which have fewer than 10 units available? — is one query, not a replay of every stream.
//!
//! `cargo run --example allocation` runs it on the embedded store (`FACTUM_DATA_DIR`, default
//! `./factum-data`) with the read model in `FACTUM_READ_MODEL` (default
//! `./factum-read-model.db`); `cargo test --example allocation` runs its tests.

use std::sync::Arc;

use factum::{
    ApplyError, BusError, CommandBus, CommandContext, Decider, EventCodec, EventProcessor,
    EventStore, Executed, Projection, ProjectionError, Projector, ReadModel, RecordedEvent,
    Repository, SqliteReadModel, Table, ToAggregate, Tx, Value, handler_fn,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// What happens to a product's stock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum ProductEvent {
    BatchCreated {
        reference: String,
        quantity: u32,
        /// `None`: in the warehouse now; otherwise the arrival date, `YYYY-MM-DD`.
        eta: Option<String>,
    },
    Allocated {
        order_id: String,
        reference: String,
        quantity: u32,
    },
    Deallocated {
        order_id: String,
        reference: String,
        quantity: u32,
    },
    BatchQuantityChanged {
        reference: String,
        quantity: u32,
    },
    OutOfStock {
        order_id: String,
        quantity: u32,
    },
}

/// What can be asked of a product.
#[derive(Clone, Debug, PartialEq)]
enum ProductCommand {
    CreateBatch {
        reference: String,
        quantity: u32,
        eta: Option<String>,
    },
    Allocate {
        order_id: String,
        quantity: u32,
    },
    ChangeBatchQuantity {
        reference: String,
        quantity: u32,
    },
}

/// Why a product refuses.
#[derive(Debug, PartialEq, thiserror::Error)]
enum ProductError {
    #[error("batch '{0}' already exists")]
    BatchExists(String),
    #[error("no batch '{0}'")]
    UnknownBatch(String),
    #[error("an order line needs a quantity of at least 1")]
    ZeroQuantity,
    #[error("'{0}' is not a date (YYYY-MM-DD)")]
    BadEta(String),
}

/// One batch of stock and the order lines allocated to it, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Batch {
    reference: String,
    quantity: u32,
    eta: Option<String>,
    allocations: Vec<(String, u32)>,
}

impl Batch {
    fn allocated(&self) -> u32 {
        self.allocations.iter().map(|(_, quantity)| quantity).sum()
    }

    fn available(&self) -> u32 {
        self.quantity.saturating_sub(self.allocated())
    }
}

/// A product's batches, in the order they were created.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Product {
    batches: Vec<Batch>,
}

impl Product {
    fn batch(&self, reference: &str) -> Option<&Batch> {
        self.batches.iter().find(|b| b.reference == reference)
    }

    fn batch_mut(&mut self, reference: &str) -> Option<&mut Batch> {
        self.batches.iter_mut().find(|b| b.reference == reference)
    }

    /// Where order `order_id` is allocated.
    fn allocation_of(&self, order_id: &str) -> Option<&str> {
        self.batches
            .iter()
            .find(|b| b.allocations.iter().any(|(o, _)| o == order_id))
            .map(|b| b.reference.as_str())
    }
}

fn valid_date(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    matches!(parts.as_slice(), [y, m, d]
        if y.len() == 4 && m.len() == 2 && d.len() == 2
            && [y, m, d].iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()))
            && (1..=12).contains(&m.parse::<u32>().unwrap_or(0))
            && (1..=31).contains(&d.parse::<u32>().unwrap_or(0)))
}

struct Products;

impl Decider for Products {
    type State = Product;
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;
    const CATEGORY: &'static str = "product";

    fn initial_state(&self) -> Product {
        Product::default()
    }

    fn decide(
        &self,
        product: &Product,
        command: &ProductCommand,
    ) -> Result<Vec<ProductEvent>, ProductError> {
        match command {
            ProductCommand::CreateBatch {
                reference,
                quantity,
                eta,
            } => {
                if product.batch(reference).is_some() {
                    return Err(ProductError::BatchExists(reference.clone()));
                }
                if let Some(eta) = eta.as_deref().filter(|eta| !valid_date(eta)) {
                    return Err(ProductError::BadEta(eta.to_owned()));
                }
                Ok(vec![ProductEvent::BatchCreated {
                    reference: reference.clone(),
                    quantity: *quantity,
                    eta: eta.clone(),
                }])
            }
            ProductCommand::Allocate { order_id, quantity } => {
                if *quantity == 0 {
                    return Err(ProductError::ZeroQuantity);
                }
                if product.allocation_of(order_id).is_some() {
                    return Ok(vec![]); // allocated already: asking again changes nothing
                }
                // In stock first (no ETA), then the earliest ETA; ISO dates sort as text.
                let chosen = product
                    .batches
                    .iter()
                    .filter(|b| b.available() >= *quantity)
                    .min_by_key(|b| (b.eta.is_some(), b.eta.clone()));
                Ok(vec![match chosen {
                    Some(batch) => ProductEvent::Allocated {
                        order_id: order_id.clone(),
                        reference: batch.reference.clone(),
                        quantity: *quantity,
                    },
                    None => ProductEvent::OutOfStock {
                        order_id: order_id.clone(),
                        quantity: *quantity,
                    },
                }])
            }
            ProductCommand::ChangeBatchQuantity {
                reference,
                quantity,
            } => {
                let batch = product
                    .batch(reference)
                    .ok_or_else(|| ProductError::UnknownBatch(reference.clone()))?;
                let mut events = vec![ProductEvent::BatchQuantityChanged {
                    reference: reference.clone(),
                    quantity: *quantity,
                }];
                // Take back the newest allocations until the rest fits.
                let mut allocated = batch.allocated();
                for (order_id, taken) in batch.allocations.iter().rev() {
                    if allocated <= *quantity {
                        break;
                    }
                    allocated -= taken;
                    events.push(ProductEvent::Deallocated {
                        order_id: order_id.clone(),
                        reference: reference.clone(),
                        quantity: *taken,
                    });
                }
                Ok(events)
            }
        }
    }

    fn evolve(&self, mut product: Product, event: &ProductEvent) -> Product {
        match event {
            ProductEvent::BatchCreated {
                reference,
                quantity,
                eta,
            } => product.batches.push(Batch {
                reference: reference.clone(),
                quantity: *quantity,
                eta: eta.clone(),
                allocations: Vec::new(),
            }),
            ProductEvent::Allocated {
                order_id,
                reference,
                quantity,
            } => {
                if let Some(batch) = product.batch_mut(reference) {
                    batch.allocations.push((order_id.clone(), *quantity));
                }
            }
            ProductEvent::Deallocated {
                order_id,
                reference,
                ..
            } => {
                if let Some(batch) = product.batch_mut(reference) {
                    batch.allocations.retain(|(o, _)| o != order_id);
                }
            }
            ProductEvent::BatchQuantityChanged {
                reference,
                quantity,
            } => {
                if let Some(batch) = product.batch_mut(reference) {
                    batch.quantity = *quantity;
                }
            }
            ProductEvent::OutOfStock { .. } => {}
        }
        product
    }
}

/// Where out-of-stock notifications go (an e-mail to the buyers, in a real shop).
#[derive(Default)]
struct Notifications(Mutex<Vec<String>>);

/// The SKU of an event in stream `product-<sku>`.
fn sku_of(event: &RecordedEvent) -> String {
    let stream = event.stream.as_str();
    stream.strip_prefix("product-").unwrap_or(stream).to_owned()
}

/// The bus with the products' repository as the handler of their commands.
fn bus(store: Arc<dyn EventStore>) -> Result<CommandBus, BusError> {
    let products = Arc::new(Repository::new(store, Products).with_snapshots(500));
    CommandBus::builder()
        .with_tracing()
        .handle::<ToAggregate<Products>, _>(products.handler())
        .build()
}

/// The processor that reacts to products' events: out-of-stock notifications, and
/// reallocation of order lines taken back from a batch.
fn allocation_processor(
    store: Arc<dyn EventStore>,
    bus: CommandBus,
    notifications: Arc<Notifications>,
) -> anyhow::Result<EventProcessor> {
    #[derive(Deserialize)]
    struct Line {
        order_id: String,
        quantity: u32,
    }
    let notify = handler_fn("notify_out_of_stock", move |event: RecordedEvent| {
        let notifications = notifications.clone();
        async move {
            let line: Line = serde_json::from_slice(&event.data)?;
            notifications.0.lock().push(format!(
                "{} × {} for order {} is out of stock",
                line.quantity,
                sku_of(&event),
                line.order_id
            ));
            Ok(())
        }
    });
    let bus = Arc::new(bus);
    let reallocate = handler_fn("reallocate", move |event: RecordedEvent| {
        let bus = bus.clone();
        async move {
            let line: Line = serde_json::from_slice(&event.data)?;
            let command = ProductCommand::Allocate {
                order_id: line.order_id,
                quantity: line.quantity,
            };
            bus.send(
                ToAggregate::<Products>::new(sku_of(&event), command),
                CommandContext::caused_by(&event),
            )
            .await?;
            Ok(())
        }
    });
    Ok(EventProcessor::builder("allocation", store)
        .on("OutOfStock", notify)
        .on("Deallocated", reallocate)
        .stream_prefixes(["product-"])
        .build()?)
}

/// The read model of stock: one row per batch, with what is allocated from it.
struct Stock;

impl Projection for Stock {
    fn name(&self) -> &str {
        "stock"
    }

    fn tables(&self) -> Vec<Table> {
        vec![Table::new(
            "batches",
            "sku TEXT NOT NULL, reference TEXT NOT NULL, quantity BIGINT NOT NULL, \
             allocated BIGINT NOT NULL, eta TEXT, PRIMARY KEY (sku, reference)",
        )]
    }

    fn filter(&self) -> factum::SubscriptionFilter {
        factum::SubscriptionFilter {
            stream_prefixes: vec!["product-".into()],
            ..Default::default()
        }
    }

    fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ApplyError> {
        let sku = Value::from(sku_of(event));
        match EventCodec::new(&Products).decode(&Products, event)? {
            ProductEvent::BatchCreated {
                reference,
                quantity,
                eta,
            } => tx.execute(
                "INSERT INTO {batches} (sku, reference, quantity, allocated, eta) \
                 VALUES ($1, $2, $3, 0, $4)",
                [sku, reference.into(), quantity.into(), eta.into()],
            ),
            ProductEvent::Allocated {
                reference,
                quantity,
                ..
            } => tx.execute(
                "UPDATE {batches} SET allocated = allocated + $3 WHERE sku = $1 AND reference = $2",
                [sku, reference.into(), quantity.into()],
            ),
            ProductEvent::Deallocated {
                reference,
                quantity,
                ..
            } => tx.execute(
                "UPDATE {batches} SET allocated = allocated - $3 WHERE sku = $1 AND reference = $2",
                [sku, reference.into(), quantity.into()],
            ),
            ProductEvent::BatchQuantityChanged {
                reference,
                quantity,
            } => tx.execute(
                "UPDATE {batches} SET quantity = $3 WHERE sku = $1 AND reference = $2",
                [sku, reference.into(), quantity.into()],
            ),
            ProductEvent::OutOfStock { .. } => {}
        }
        Ok(())
    }
}

/// Products with fewer than `units` available (in stock or on the way), fewest first.
async fn products_under(
    read_model: &dyn ReadModel,
    units: i64,
) -> Result<Vec<(String, i64)>, ProjectionError> {
    let rows = read_model
        .query(
            "SELECT sku, CAST(SUM(quantity - allocated) AS BIGINT) AS available FROM batches \
             GROUP BY sku HAVING SUM(quantity - allocated) < $1 ORDER BY available, sku",
            &[units.into()],
        )
        .await?;
    rows.iter().map(|row| row.to()).collect()
}

async fn send(
    bus: &CommandBus,
    sku: &str,
    command: ProductCommand,
) -> Result<Executed<ProductEvent>, BusError> {
    bus.send(
        ToAggregate::<Products>::new(sku, command),
        CommandContext::new().by("warehouse-app"),
    )
    .await
}

fn batch(reference: &str, quantity: u32, eta: Option<&str>) -> ProductCommand {
    ProductCommand::CreateBatch {
        reference: reference.into(),
        quantity,
        eta: eta.map(str::to_owned),
    }
}

fn allocate(order_id: &str, quantity: u32) -> ProductCommand {
    ProductCommand::Allocate {
        order_id: order_id.into(),
        quantity,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::var("FACTUM_DATA_DIR").unwrap_or_else(|_| "./factum-data".into());
    let engine = factum::Engine::open(&dir, factum::EngineOptions::default())?;
    let store: Arc<dyn EventStore> = Arc::new(engine.clone());
    let bus = bus(store.clone())?;
    let sku = format!("LAMP-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    println!("product {sku} on the embedded store in {dir}");

    send(&bus, &sku, batch("warehouse", 20, None)).await?;
    send(&bus, &sku, batch("ship-b", 50, Some("2026-12-09"))).await?;
    send(&bus, &sku, batch("ship-a", 50, Some("2026-12-02"))).await?;
    for (order, quantity) in [("o-1", 10), ("o-2", 8), ("o-3", 5), ("o-4", 200)] {
        let done = send(&bus, &sku, allocate(order, quantity)).await?;
        println!("  Allocate {order} × {quantity} → {:?}", done.events);
    }
    let done = send(
        &bus,
        &sku,
        ProductCommand::ChangeBatchQuantity {
            reference: "warehouse".into(),
            quantity: 12,
        },
    )
    .await?;
    println!("  ChangeBatchQuantity warehouse → 12: {:?}", done.events);
    match send(&bus, &sku, batch("warehouse", 1, None)).await {
        Err(e) => println!(
            "  CreateBatch warehouse again → rejected: {}",
            e.rejection::<ProductError>()
                .map_or_else(|| e.to_string(), ToString::to_string)
        ),
        Ok(done) => anyhow::bail!("expected a rejection, got {:?}", done.events),
    }

    let notifications = Arc::new(Notifications::default());
    let processor = allocation_processor(store.clone(), bus.clone(), notifications.clone())?;
    let stats = processor.run_until(engine.head()).await?;
    println!("  processor handled {} event(s)", stats.events);
    for notification in notifications.0.lock().iter() {
        println!("  notification: {notification}");
    }
    let file =
        std::env::var("FACTUM_READ_MODEL").unwrap_or_else(|_| "./factum-read-model.db".into());
    let read_model = SqliteReadModel::open(&file).await?;
    Projector::new(store.clone(), Arc::new(read_model.clone()), Stock)
        .run_until(engine.head())
        .await?;
    println!("  products with fewer than 10 available (read model in {file}):");
    let low = products_under(&read_model, 10).await?;
    for (sku, available) in &low {
        println!("    {sku}: {available}");
    }
    if low.is_empty() {
        println!("    (none)");
    }
    let product = Repository::new(store, Products).load(&sku).await?;
    for batch in product.state.batches {
        println!(
            "  {:<9} eta {:<10} {:>3} of {:>3} allocated: {:?}",
            batch.reference,
            batch.eta.as_deref().unwrap_or("in stock"),
            batch.allocated(),
            batch.quantity,
            batch.allocations
        );
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

    fn created(reference: &str, quantity: u32, eta: Option<&str>) -> ProductEvent {
        ProductEvent::BatchCreated {
            reference: reference.into(),
            quantity,
            eta: eta.map(str::to_owned),
        }
    }

    fn allocated(order_id: &str, reference: &str, quantity: u32) -> ProductEvent {
        ProductEvent::Allocated {
            order_id: order_id.into(),
            reference: reference.into(),
            quantity,
        }
    }

    #[test]
    fn allocation_prefers_stock_in_the_warehouse_to_shipments() {
        given(
            Products,
            [
                created("ship", 100, Some("2026-12-01")),
                created("warehouse", 100, None),
            ],
        )
        .when(allocate("o-1", 10))
        .then([allocated("o-1", "warehouse", 10)]);
    }

    #[test]
    fn among_shipments_the_earliest_eta_is_preferred() {
        given(
            Products,
            [
                created("late", 100, Some("2027-01-15")),
                created("soon", 100, Some("2026-12-01")),
                created("medium", 100, Some("2026-12-20")),
            ],
        )
        .when(allocate("o-1", 10))
        .then([allocated("o-1", "soon", 10)]);
    }

    #[test]
    fn a_batch_without_enough_left_is_skipped_and_nothing_left_is_out_of_stock() {
        given(
            Products,
            [
                created("warehouse", 10, None),
                allocated("o-1", "warehouse", 8),
                created("ship", 5, Some("2026-12-01")),
            ],
        )
        .when(allocate("o-2", 4))
        .then([allocated("o-2", "ship", 4)]);
        given(Products, [created("warehouse", 10, None)])
            .when(allocate("o-1", 11))
            .then([ProductEvent::OutOfStock {
                order_id: "o-1".into(),
                quantity: 11,
            }]);
    }

    #[test]
    fn allocating_an_allocated_order_again_changes_nothing() {
        given(Products, [created("w", 10, None), allocated("o-1", "w", 2)])
            .when(allocate("o-1", 2))
            .then([]);
    }

    #[test]
    fn reducing_a_batch_takes_back_the_newest_allocations_until_the_rest_fits() {
        let product = given(
            Products,
            [
                created("w", 20, None),
                allocated("o-1", "w", 10),
                allocated("o-2", "w", 4),
                allocated("o-3", "w", 4),
            ],
        )
        .when(ProductCommand::ChangeBatchQuantity {
            reference: "w".into(),
            quantity: 11,
        })
        .then([
            ProductEvent::BatchQuantityChanged {
                reference: "w".into(),
                quantity: 11,
            },
            ProductEvent::Deallocated {
                order_id: "o-3".into(),
                reference: "w".into(),
                quantity: 4,
            },
            ProductEvent::Deallocated {
                order_id: "o-2".into(),
                reference: "w".into(),
                quantity: 4,
            },
        ]);
        assert_eq!(product.batches[0].allocations, vec![("o-1".to_owned(), 10)]);
        assert_eq!(product.batches[0].available(), 1);
    }

    #[test]
    fn bad_commands_are_rejected() {
        given(Products, [created("w", 1, None)])
            .when(batch("w", 5, None))
            .then_rejected(ProductError::BatchExists("w".into()));
        given(Products, [])
            .when(ProductCommand::ChangeBatchQuantity {
                reference: "nope".into(),
                quantity: 1,
            })
            .then_rejected(ProductError::UnknownBatch("nope".into()));
        given(Products, [])
            .when(batch("w", 5, Some("next week")))
            .then_rejected(ProductError::BadEta("next week".into()));
        given(Products, [created("w", 1, None)])
            .when(allocate("o-1", 0))
            .then_rejected(ProductError::ZeroQuantity);
    }

    async fn run_scenario(store: Arc<dyn EventStore>) {
        let bus = bus(store.clone()).unwrap();
        send(&bus, "LAMP", batch("warehouse", 20, None))
            .await
            .unwrap();
        send(&bus, "LAMP", batch("ship-b", 50, Some("2026-12-09")))
            .await
            .unwrap();
        send(&bus, "LAMP", batch("ship-a", 50, Some("2026-12-02")))
            .await
            .unwrap();
        for (order, quantity) in [("o-1", 10), ("o-2", 8), ("o-3", 5), ("o-4", 200)] {
            send(&bus, "LAMP", allocate(order, quantity)).await.unwrap();
        }
        let changed = send(
            &bus,
            "LAMP",
            ProductCommand::ChangeBatchQuantity {
                reference: "warehouse".into(),
                quantity: 12,
            },
        )
        .await
        .unwrap();
        assert_eq!(changed.events.len(), 2, "o-2 is taken back");
        // A rejection reaches the sender with the decider's own error.
        let error = send(&bus, "LAMP", batch("warehouse", 1, None))
            .await
            .unwrap_err();
        assert_eq!(
            error.rejection::<ProductError>(),
            Some(&ProductError::BatchExists("warehouse".into()))
        );

        let notifications = Arc::new(Notifications::default());
        let processor =
            allocation_processor(store.clone(), bus.clone(), notifications.clone()).unwrap();
        processor.run_until(store.head()).await.unwrap();

        assert_eq!(
            *notifications.0.lock(),
            vec!["200 × LAMP for order o-4 is out of stock".to_owned()]
        );
        let product = Repository::new(store.clone(), Products)
            .load("LAMP")
            .await
            .unwrap()
            .state;
        assert_eq!(product.allocation_of("o-1"), Some("warehouse"));
        assert_eq!(product.allocation_of("o-2"), Some("ship-a"), "reallocated");
        assert_eq!(product.allocation_of("o-3"), Some("ship-a"));
        assert_eq!(product.allocation_of("o-4"), None);
        for b in &product.batches {
            assert!(b.allocated() <= b.quantity, "{b:?} is over-allocated");
        }

        // The reallocation was caused by the deallocation and shares its correlation.
        let stream = StreamName::user("product-LAMP").unwrap();
        let events = store
            .read_stream(&stream, 0, Direction::Forwards, 100)
            .await
            .unwrap();
        let deallocated = events
            .iter()
            .find(|e| e.event_type == "Deallocated")
            .unwrap();
        let reallocated = events.last().unwrap();
        assert_eq!(reallocated.event_type, "Allocated");
        let metadata = reallocated.metadata_json();
        assert_eq!(metadata["$causationId"], deallocated.id.to_string());
        assert_eq!(
            metadata["$correlationId"],
            deallocated.metadata_json()["$correlationId"]
        );

        // Handling the deallocation again (a second processor from the start) allocates
        // nothing twice.
        let again = EventProcessor::builder("allocation-again", store.clone())
            .on(
                "Deallocated",
                handler_fn("reallocate", {
                    let bus = bus.clone();
                    move |event: RecordedEvent| {
                        let bus = bus.clone();
                        async move {
                            let line: serde_json::Value = serde_json::from_slice(&event.data)?;
                            let command = allocate(
                                line["order_id"].as_str().unwrap_or_default(),
                                line["quantity"].as_u64().unwrap_or_default() as u32,
                            );
                            bus.send(
                                ToAggregate::<Products>::new(sku_of(&event), command),
                                CommandContext::caused_by(&event),
                            )
                            .await?;
                            Ok(())
                        }
                    }
                }),
            )
            .build()
            .unwrap();
        let head = store.head();
        again.run_until(head).await.unwrap();
        let after = store
            .read_stream(&stream, 0, Direction::Forwards, 100)
            .await
            .unwrap();
        assert_eq!(after.len(), events.len());
    }

    /// The stock read model answers "fewer than 10 available" across products, and follows
    /// allocations, a reduced batch and the reallocation it causes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn products_under_10_available_come_from_the_read_model() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
        let dir = tempfile::tempdir().unwrap();
        let read_model = SqliteReadModel::open(dir.path().join("read.db"))
            .await
            .unwrap();
        let projector = Projector::new(store.clone(), Arc::new(read_model.clone()), Stock);
        let bus = bus(store.clone()).unwrap();
        send(&bus, "LAMP", batch("warehouse", 20, None))
            .await
            .unwrap();
        send(&bus, "CHAIR", batch("warehouse", 8, None))
            .await
            .unwrap();
        send(&bus, "DESK", batch("ship", 30, Some("2026-12-24")))
            .await
            .unwrap();
        send(&bus, "LAMP", allocate("o-1", 12)).await.unwrap();
        send(&bus, "CHAIR", allocate("o-2", 9)).await.unwrap(); // out of stock
        projector.run_until(store.head()).await.unwrap();
        assert_eq!(
            products_under(&read_model, 10).await.unwrap(),
            [("CHAIR".to_owned(), 8), ("LAMP".to_owned(), 8)]
        );

        // A new batch for the lamp; the chair's batch shrinks under an allocation.
        send(&bus, "LAMP", batch("ship", 50, Some("2026-12-02")))
            .await
            .unwrap();
        send(&bus, "CHAIR", allocate("o-3", 5)).await.unwrap();
        send(
            &bus,
            "CHAIR",
            ProductCommand::ChangeBatchQuantity {
                reference: "warehouse".into(),
                quantity: 4,
            },
        )
        .await
        .unwrap();
        projector.run_until(store.head()).await.unwrap();
        assert_eq!(
            products_under(&read_model, 10).await.unwrap(),
            [("CHAIR".to_owned(), 4)],
            "the chair's allocation of 5 was taken back from its batch of 4"
        );
        let everything = products_under(&read_model, i64::MAX).await.unwrap();
        assert_eq!(everything.len(), 3);
    }

    #[tokio::test]
    async fn the_seed_scenario_on_the_in_memory_store() {
        run_scenario(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_seed_scenario_on_the_embedded_store() {
        let dir = tempfile::tempdir().unwrap();
        let engine = factum::Engine::open(dir.path(), factum::EngineOptions::default()).unwrap();
        run_scenario(Arc::new(engine.clone())).await;
        engine.close().unwrap();
    }
}
