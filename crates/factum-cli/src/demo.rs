//! `factum demo`: a shopping cart on the embedded store, step by step — appends, optimistic
//! concurrency, an idempotent retry, state rebuilt by replay, and a live subscription.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use factum::{
    Direction, Engine, EngineOptions, EventStore, ExpectedState, NewEvent, RecordedEvent,
    StoreError, StreamName, SubscriptionFilter,
};
use serde_json::json;

fn event(event_type: &str, data: serde_json::Value) -> Result<NewEvent> {
    Ok(NewEvent::json(event_type, &data)?
        .with_metadata(&json!({"$correlationId": "demo", "user": "demo-user"}))?)
}

/// The cart's state, rebuilt from its events (the `evolve` of a decider).
fn evolve(mut cart: BTreeMap<String, u64>, event: &RecordedEvent) -> Result<BTreeMap<String, u64>> {
    let data: serde_json::Value = serde_json::from_slice(&event.data)?;
    let sku = data["sku"].as_str().unwrap_or_default().to_owned();
    match event.event_type.as_str() {
        "ItemAdded" => *cart.entry(sku).or_default() += data["quantity"].as_u64().unwrap_or(1),
        "QuantityChanged" => {
            cart.insert(sku, data["quantity"].as_u64().unwrap_or(0));
        }
        "ItemRemoved" => {
            cart.remove(&sku);
        }
        _ => {}
    }
    Ok(cart)
}

pub async fn run(dir: &Path) -> Result<()> {
    let store = Engine::open(dir, EngineOptions::default())
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    let report = store.open_report();
    println!(
        "Factum demo — embedded store in {} ({} events already there)\n",
        dir.display(),
        report.events
    );

    let cart = StreamName::user(format!(
        "cart-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    ))?;
    println!("1. A shopping cart is a stream of facts: '{cart}'.");
    let r = store
        .append(
            &cart,
            ExpectedState::NoStream,
            vec![
                event("ItemAdded", json!({"sku": "apple", "quantity": 3}))?,
                event("ItemAdded", json!({"sku": "pear", "quantity": 1}))?,
            ],
        )
        .await?;
    println!(
        "   appended ItemAdded ×2 atomically and durably: revisions {}..={}, last at position {}",
        r.first_revision, r.last_revision, r.position
    );

    println!(
        "\n2. Two clients change the cart at once, both having read revision {}.",
        r.last_revision
    );
    let (a, b) = tokio::join!(
        store.append(
            &cart,
            ExpectedState::Exact(r.last_revision),
            vec![event(
                "QuantityChanged",
                json!({"sku": "apple", "quantity": 5})
            )?]
        ),
        store.append(
            &cart,
            ExpectedState::Exact(r.last_revision),
            vec![event("ItemRemoved", json!({"sku": "apple"}))?]
        ),
    );
    let mut winner = None;
    for (who, outcome) in [("client A", a), ("client B", b)] {
        match outcome {
            Ok(result) => {
                println!("   {who}: accepted at revision {}", result.last_revision);
                winner = Some(result);
            }
            Err(StoreError::WrongExpectedRevision {
                expected, actual, ..
            }) => {
                println!(
                    "   {who}: rejected — expected {expected}, but the cart is at {actual}; it must reload and decide again"
                )
            }
            Err(other) => return Err(other.into()),
        }
    }
    let Some(winner) = winner else {
        bail!("neither client won")
    };

    println!("\n3. A retry of an append that already succeeded (same event id) changes nothing.");
    let retried = event("ItemAdded", json!({"sku": "plum", "quantity": 2}))?;
    let first = store
        .append(
            &cart,
            ExpectedState::Exact(winner.last_revision),
            vec![retried.clone()],
        )
        .await?;
    let again = store
        .append(
            &cart,
            ExpectedState::Exact(winner.last_revision),
            vec![retried],
        )
        .await?;
    println!(
        "   first attempt: revision {} at position {}; retry: revision {} at position {} (the same)",
        first.last_revision, first.position, again.last_revision, again.position
    );

    println!("\n4. The cart's state is rebuilt by replaying its events:");
    let events = store
        .read_stream(&cart, 0, Direction::Forwards, 1000)
        .await?;
    let mut state = BTreeMap::new();
    for e in &events {
        state = evolve(state, e)?;
        println!(
            "   r{} {:<16} {}",
            e.revision,
            e.event_type,
            String::from_utf8_lossy(&e.data)
        );
    }
    println!("   → cart now holds {state:?}");

    println!("\n5. A subscription to $all catches up, then receives new events live:");
    let filter = SubscriptionFilter {
        stream_prefixes: vec![cart.to_string()],
        ..Default::default()
    };
    let from = events.first().map_or(0, |e| e.position);
    let mut subscription = store.subscribe_all(from, filter);
    for _ in 0..events.len() {
        let e = subscription.next().await?;
        println!("   caught up: position {} {}", e.position, e.event_type);
    }
    let writer = store.clone();
    let stream = cart.clone();
    let last = first.last_revision;
    let total_items: u64 = state.values().sum();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let checked_out = NewEvent::json("CartCheckedOut", &json!({"total_items": total_items}));
        if let Ok(checked_out) = checked_out {
            let _ = writer
                .append(&stream, ExpectedState::Exact(last), vec![checked_out])
                .await;
        }
    });
    let live = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await??;
    println!(
        "   live:      position {} {}",
        live.position, live.event_type
    );

    store.close()?;
    println!(
        "\nEverything above is on disk in {}. Try:\n  factum read {cart}\n  factum read-all --backwards --limit 5\n  factum streams\n  factum verify\n  factum bench",
        dir.display()
    );
    Ok(())
}
