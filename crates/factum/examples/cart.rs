//! Shopping cart (seed 002): a stream of `ItemAdded` / `ItemRemoved` / `QuantityChanged` events
//! per cart, a configurable limit on distinct items, and no changes after checkout.
//!
//! `cargo run --example cart` runs it on the embedded store (`FACTUM_DATA_DIR`, default
//! `./factum-data`); `cargo test --example cart` runs its tests.

use std::collections::BTreeMap;

use factum::{CommandContext, Decider, Repository, RepositoryError};
use serde::{Deserialize, Serialize};

/// What happens to a cart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum CartEvent {
    ItemAdded {
        sku: String,
        quantity: u32,
        unit_price_cents: u64,
    },
    ItemRemoved {
        sku: String,
    },
    QuantityChanged {
        sku: String,
        quantity: u32,
    },
    CheckedOut {
        total_cents: u64,
    },
}

/// What a shopper asks for.
#[derive(Clone, Debug, PartialEq)]
enum CartCommand {
    AddItem {
        sku: String,
        quantity: u32,
        unit_price_cents: u64,
    },
    RemoveItem {
        sku: String,
    },
    ChangeQuantity {
        sku: String,
        quantity: u32,
    },
    CheckOut,
}

/// Why a cart refuses.
#[derive(Debug, PartialEq, thiserror::Error)]
enum CartError {
    #[error("a cart holds at most {0} different items")]
    TooManyItems(usize),
    #[error("'{0}' is not in the cart")]
    NotInCart(String),
    #[error("the cart is checked out and cannot change")]
    CheckedOut,
    #[error("a quantity must be at least 1")]
    ZeroQuantity,
    #[error("an empty cart cannot be checked out")]
    Empty,
}

/// A cart: quantity and unit price per SKU.
#[derive(Clone, Debug, Default, PartialEq)]
struct Cart {
    items: BTreeMap<String, (u32, u64)>,
    checked_out: bool,
}

impl Cart {
    fn total_cents(&self) -> u64 {
        self.items
            .values()
            .map(|(q, price)| u64::from(*q) * price)
            .sum()
    }
}

/// The cart decider, with its limit on distinct items.
struct Carts {
    max_items: usize,
}

impl Decider for Carts {
    type State = Cart;
    type Command = CartCommand;
    type Event = CartEvent;
    type Error = CartError;
    const CATEGORY: &'static str = "cart";

    fn initial_state(&self) -> Cart {
        Cart::default()
    }

    fn decide(&self, cart: &Cart, command: &CartCommand) -> Result<Vec<CartEvent>, CartError> {
        if cart.checked_out {
            return Err(CartError::CheckedOut);
        }
        match command {
            CartCommand::AddItem {
                sku,
                quantity,
                unit_price_cents,
            } => {
                if *quantity == 0 {
                    return Err(CartError::ZeroQuantity);
                }
                if !cart.items.contains_key(sku) && cart.items.len() >= self.max_items {
                    return Err(CartError::TooManyItems(self.max_items));
                }
                Ok(vec![CartEvent::ItemAdded {
                    sku: sku.clone(),
                    quantity: *quantity,
                    unit_price_cents: *unit_price_cents,
                }])
            }
            CartCommand::RemoveItem { sku } => {
                if !cart.items.contains_key(sku) {
                    return Err(CartError::NotInCart(sku.clone()));
                }
                Ok(vec![CartEvent::ItemRemoved { sku: sku.clone() }])
            }
            CartCommand::ChangeQuantity { sku, quantity } => {
                match cart.items.get(sku) {
                    None => Err(CartError::NotInCart(sku.clone())),
                    Some(_) if *quantity == 0 => Err(CartError::ZeroQuantity),
                    // Already so: nothing happens.
                    Some((current, _)) if current == quantity => Ok(vec![]),
                    Some(_) => Ok(vec![CartEvent::QuantityChanged {
                        sku: sku.clone(),
                        quantity: *quantity,
                    }]),
                }
            }
            CartCommand::CheckOut => {
                if cart.items.is_empty() {
                    return Err(CartError::Empty);
                }
                Ok(vec![CartEvent::CheckedOut {
                    total_cents: cart.total_cents(),
                }])
            }
        }
    }

    fn evolve(&self, mut cart: Cart, event: &CartEvent) -> Cart {
        match event {
            CartEvent::ItemAdded {
                sku,
                quantity,
                unit_price_cents,
            } => {
                let entry = cart
                    .items
                    .entry(sku.clone())
                    .or_insert((0, *unit_price_cents));
                entry.0 += quantity;
                entry.1 = *unit_price_cents;
            }
            CartEvent::ItemRemoved { sku } => {
                cart.items.remove(sku);
            }
            CartEvent::QuantityChanged { sku, quantity } => {
                if let Some(entry) = cart.items.get_mut(sku) {
                    entry.0 = *quantity;
                }
            }
            CartEvent::CheckedOut { .. } => cart.checked_out = true,
        }
        cart
    }
}

fn add(sku: &str, quantity: u32, unit_price_cents: u64) -> CartCommand {
    CartCommand::AddItem {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::var("FACTUM_DATA_DIR").unwrap_or_else(|_| "./factum-data".into());
    let store = factum::Engine::open(&dir, factum::EngineOptions::default())?;
    let carts = Repository::new(store.clone(), Carts { max_items: 3 });
    let cart = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let shopper = CommandContext::new().by("shopper-17");
    println!("cart {cart} on the embedded store in {dir} (at most 3 different items)");

    for command in [add("apple", 2, 45), add("pear", 1, 80), add("plum", 6, 30)] {
        let done = carts.execute(&cart, command.clone(), &shopper).await?;
        println!(
            "  {command:?} → {:?} at revision {:?}",
            done.events, done.revision
        );
    }
    match carts.execute(&cart, add("kiwi", 1, 60), &shopper).await {
        Err(RepositoryError::Rejected(why)) => println!("  AddItem kiwi rejected: {why}"),
        other => anyhow::bail!("expected a rejection, got {other:?}"),
    }
    carts
        .execute(
            &cart,
            CartCommand::ChangeQuantity {
                sku: "plum".into(),
                quantity: 2,
            },
            &shopper,
        )
        .await?;
    carts
        .execute(
            &cart,
            CartCommand::RemoveItem { sku: "pear".into() },
            &shopper,
        )
        .await?;

    // Two devices of the same shopper change the cart at the same time: the repository
    // reloads and decides again for the one that lost the race.
    let (a, b) = tokio::join!(
        carts.execute(&cart, add("kiwi", 1, 60), &shopper),
        carts.execute(&cart, add("apple", 1, 45), &shopper),
    );
    println!(
        "  concurrent adds: {} and {} attempt(s)",
        a?.attempts, b?.attempts
    );

    let checked_out = carts
        .execute(&cart, CartCommand::CheckOut, &shopper)
        .await?;
    println!("  checked out: {:?}", checked_out.events);
    match carts.execute(&cart, add("fig", 1, 99), &shopper).await {
        Err(RepositoryError::Rejected(why)) => println!("  AddItem fig rejected: {why}"),
        other => anyhow::bail!("expected a rejection, got {other:?}"),
    }
    let loaded = carts.load(&cart).await?;
    println!(
        "  final state at revision {:?}: {:?}",
        loaded.revision, loaded.state
    );
    store.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use factum::testing::given;
    use factum::{Direction, EventStore, MemoryStore};

    fn added(sku: &str, quantity: u32) -> CartEvent {
        CartEvent::ItemAdded {
            sku: sku.into(),
            quantity,
            unit_price_cents: 100,
        }
    }

    #[test]
    fn adding_an_item_records_it() {
        given(Carts { max_items: 2 }, [])
            .when(add("apple", 2, 100))
            .then([added("apple", 2)]);
    }

    #[test]
    fn a_cart_holds_at_most_the_configured_number_of_items() {
        given(
            Carts { max_items: 2 },
            [added("apple", 1), added("pear", 1)],
        )
        .when(add("plum", 1, 100))
        .then_rejected(CartError::TooManyItems(2));
        // More of an item already there is fine.
        given(
            Carts { max_items: 2 },
            [added("apple", 1), added("pear", 1)],
        )
        .when(add("apple", 1, 100))
        .then([added("apple", 1)]);
    }

    #[test]
    fn removing_and_changing_need_the_item_in_the_cart() {
        given(Carts { max_items: 5 }, [])
            .when(CartCommand::RemoveItem { sku: "fig".into() })
            .then_rejected(CartError::NotInCart("fig".into()));
        given(
            Carts { max_items: 5 },
            [
                added("fig", 1),
                CartEvent::ItemRemoved { sku: "fig".into() },
            ],
        )
        .when(CartCommand::ChangeQuantity {
            sku: "fig".into(),
            quantity: 3,
        })
        .then_rejected(CartError::NotInCart("fig".into()));
        let cart = given(Carts { max_items: 5 }, [added("fig", 1)])
            .when(CartCommand::ChangeQuantity {
                sku: "fig".into(),
                quantity: 3,
            })
            .then([CartEvent::QuantityChanged {
                sku: "fig".into(),
                quantity: 3,
            }]);
        assert_eq!(cart.items["fig"].0, 3);
        given(Carts { max_items: 5 }, [added("fig", 3)])
            .when(CartCommand::ChangeQuantity {
                sku: "fig".into(),
                quantity: 3,
            })
            .then([]);
    }

    #[test]
    fn a_checked_out_cart_cannot_change() {
        let history = [
            added("apple", 2),
            CartEvent::CheckedOut { total_cents: 200 },
        ];
        for command in [
            add("pear", 1, 1),
            CartCommand::RemoveItem {
                sku: "apple".into(),
            },
            CartCommand::ChangeQuantity {
                sku: "apple".into(),
                quantity: 1,
            },
            CartCommand::CheckOut,
        ] {
            given(Carts { max_items: 5 }, history.clone())
                .when(command)
                .then_rejected(CartError::CheckedOut);
        }
        given(Carts { max_items: 5 }, [])
            .when(CartCommand::CheckOut)
            .then_rejected(CartError::Empty);
        given(
            Carts { max_items: 5 },
            [added("apple", 2), added("pear", 1)],
        )
        .when(CartCommand::CheckOut)
        .then([CartEvent::CheckedOut { total_cents: 300 }]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_cart_runs_on_the_embedded_store_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = factum::Engine::open(dir.path(), Default::default()).unwrap();
        let carts = Repository::new(store.clone(), Carts { max_items: 3 });
        let context = CommandContext::new().by("ann");
        carts
            .execute("c1", add("apple", 2, 45), &context)
            .await
            .unwrap();
        carts
            .execute("c1", add("pear", 1, 80), &context)
            .await
            .unwrap();
        let rejected = carts
            .execute(
                "c1",
                CartCommand::RemoveItem { sku: "kiwi".into() },
                &context,
            )
            .await;
        assert!(matches!(
            rejected,
            Err(RepositoryError::Rejected(CartError::NotInCart(_)))
        ));
        store.close().unwrap();
        drop(carts);
        drop(store);

        let store = factum::Engine::open(dir.path(), Default::default()).unwrap();
        let carts = Repository::new(store.clone(), Carts { max_items: 3 });
        let loaded = carts.load("c1").await.unwrap();
        assert_eq!(loaded.revision, Some(1));
        assert_eq!(loaded.state.total_cents(), 170);
        // Every event carries the command's correlation and causation ids and the user.
        let stream = carts.stream("c1").unwrap();
        for event in store
            .read_stream(&stream, 0, Direction::Forwards, 10)
            .await
            .unwrap()
        {
            let metadata = event.metadata_json();
            assert_eq!(metadata["$correlationId"], context.correlation_id.as_str());
            assert_eq!(metadata["$causationId"], context.causation_id.as_str());
            assert_eq!(metadata["$user"], "ann");
            assert_eq!(metadata["$schemaVersion"], 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commands_are_retried_and_none_is_lost() {
        // Each loss means another command succeeded, so 16 contenders need at most 16 attempts.
        let carts = std::sync::Arc::new(
            Repository::new(MemoryStore::new(), Carts { max_items: 100 }).with_attempts_max(16),
        );
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let carts = carts.clone();
                tokio::spawn(async move {
                    carts
                        .execute(
                            "shared",
                            add(&format!("sku-{i}"), 1, 10),
                            &CommandContext::new(),
                        )
                        .await
                })
            })
            .collect();
        let mut retried = 0;
        for task in tasks {
            let done = task.await.unwrap().unwrap();
            retried += usize::from(done.attempts > 1);
        }
        let cart = carts.load("shared").await.unwrap();
        assert_eq!(cart.state.items.len(), 16, "every add took effect once");
        assert_eq!(cart.revision, Some(15));
        println!("{retried} commands were decided more than once");
    }
}
