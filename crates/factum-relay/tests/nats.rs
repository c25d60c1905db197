//! The relay against a real NATS JetStream server.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use factum_relay::{Backoff, NatsConfig, NatsPublisher, Payload, Relay, TypeMap, ZeroPayload};

fn translator() -> TypeMap {
    TypeMap::new()
        .map("OrderPlaced", "order.placed.v1", Payload::Data)
        .map("OrderPaid", "OrderPaid", Payload::Zero)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_events_leave_in_stream_order_with_their_ids_and_the_checkpoint_follows() {
    let url = nats_url();
    if !reachable("NATS", &url).await {
        return;
    }
    let (_dir, store) = engine_store();
    let types = ["OrderPlaced", "OrderPaid", "InternalNote"];
    let appended = append_orders(store.as_ref(), "order", 10, 30, &types).await;
    // Another category the relay does not follow.
    append_orders(store.as_ref(), "cart", 2, 5, &["OrderPlaced"]).await;

    let prefix = unique("t");
    let js_stream = unique("RELAY");
    let config = NatsConfig {
        subject_prefix: prefix.clone(),
        jetstream_stream: Some(js_stream.clone()),
        ..NatsConfig::new(&url)
    };
    let relay = || {
        Relay::builder("orders-out", store.clone())
            .stream_prefixes(["order-"])
            .translator(translator())
            .batch(64)
            .build()
            .unwrap()
    };
    let mut running = spawn_relay(relay(), NatsPublisher::new(config.clone()));
    caught_up(&mut running.status, store.as_ref()).await;

    let mapped: Vec<_> = appended
        .iter()
        .filter(|(_, t)| t != "InternalNote")
        .collect();
    let received = read_jetstream(&url, &js_stream, mapped.len(), Duration::from_secs(5)).await;
    assert_eq!(
        received.len(),
        mapped.len(),
        "every mapped event, and nothing else"
    );
    assert_stream_order(&received);
    for (message, event) in with_stored_events(store.as_ref(), &received).await {
        match event.event_type.as_str() {
            "OrderPlaced" => {
                assert_eq!(message.event_type, "order.placed.v1");
                assert_eq!(message.subject, format!("{prefix}.order.order_placed_v1"));
                assert_eq!(
                    message.payload,
                    event.data.to_vec(),
                    "data leaves as stored"
                );
            }
            "OrderPaid" => {
                assert_eq!(message.subject, format!("{prefix}.order.OrderPaid"));
                let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
                assert_eq!(body["id"], message.id.as_str());
                assert!(
                    body.get("n").is_none(),
                    "a zero payload carries no data: {body}"
                );
            }
            other => panic!("{other} should not have left"),
        }
    }
    running.stop().await;
    let checkpoint = store.read_checkpoint("orders-out").await.unwrap();
    assert!(
        checkpoint >= Some(appended_last(store.as_ref()).await),
        "the checkpoint is stored"
    );

    // A restarted relay publishes only what came after its checkpoint.
    let more = append_orders(store.as_ref(), "order", 3, 2, &["OrderPlaced"]).await;
    let mut running = spawn_relay(relay(), NatsPublisher::new(config));
    caught_up(&mut running.status, store.as_ref()).await;
    let status = running.stop().await;
    assert_eq!(status.published, more.len() as u64);
    let received = read_jetstream(
        &url,
        &js_stream,
        mapped.len() + more.len(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(received.len(), mapped.len() + more.len());
    delete_jetstream(&url, &js_stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_lose_nothing_and_jetstream_drops_the_duplicates() {
    let url = nats_url();
    if !reachable("NATS", &url).await {
        return;
    }
    let proxy = Proxy::start(url.trim_start_matches("nats://").to_owned()).await;
    let (_dir, store) = engine_store();
    let js_stream = unique("CUT");
    let relay = Relay::builder("cut-out", store.clone())
        .translator(ZeroPayload)
        .batch(100)
        .backoff(Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(200),
        })
        .build()
        .unwrap();
    let publisher = NatsPublisher::new(NatsConfig {
        subject_prefix: unique("c"),
        jetstream_stream: Some(js_stream.clone()),
        ack_timeout: Duration::from_secs(2),
        ..NatsConfig::new(format!("nats://{}", proxy.address))
    });
    let mut running = spawn_relay(relay, publisher);

    // Appends flow in while the connection is cut again and again.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut all = Vec::new();
            for round in 0..20 {
                let category = format!("o{round}");
                all.extend(append_orders(store.as_ref(), &category, 5, 20, &["A", "B"]).await);
            }
            all
        })
    };
    let mut cuts = 0;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.cut();
        cuts += 1;
    }
    let appended = writer.await.unwrap();
    caught_up(&mut running.status, store.as_ref()).await;
    let status = running.stop().await;
    eprintln!("{cuts} cuts, {} failed publishes", status.failures);

    let received = read_jetstream(&url, &js_stream, appended.len(), Duration::from_secs(5)).await;
    assert_eq!(
        received.len(),
        appended.len(),
        "nothing lost, no duplicate kept"
    );
    let ids: HashSet<_> = received.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), appended.len());
    assert_stream_order(&received);
    delete_jetstream(&url, &js_stream).await;
}

/// Two replicas of a service each run the relay: one publishes, the other waits and takes
/// over from the checkpoint when the first stops; every event leaves, in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_copy_of_a_relay_waits_and_takes_over_when_the_first_stops() {
    let url = nats_url();
    if !reachable("NATS", &url).await {
        return;
    }
    let (_dir, store) = engine_store();
    let js_stream = unique("REPLICAS");
    let config = NatsConfig {
        subject_prefix: unique("r"),
        jetstream_stream: Some(js_stream.clone()),
        ..NatsConfig::new(&url)
    };
    let relay = || {
        Relay::builder("orders-replicated", store.clone())
            .translator(TypeMap::new().map("OrderPlaced", "OrderPlaced", Payload::Data))
            .batch(16)
            .build()
            .unwrap()
    };
    let mut appended = append_orders(store.as_ref(), "order", 4, 10, &["OrderPlaced"]).await;
    let mut first = spawn_relay(relay(), NatsPublisher::new(config.clone()));
    caught_up(&mut first.status, store.as_ref()).await;
    let mut second = spawn_relay(relay(), NatsPublisher::new(config.clone()));
    tokio::time::timeout(
        Duration::from_secs(10),
        second.status.wait_for(|s| s.standby),
    )
    .await
    .expect("the second copy waits")
    .map(drop)
    .unwrap();

    appended.extend(append_orders(store.as_ref(), "order", 4, 10, &["OrderPlaced"]).await);
    caught_up(&mut first.status, store.as_ref()).await;
    assert_eq!(
        second.status.borrow().published,
        0,
        "the waiting copy published"
    );
    let first = first.stop().await;
    assert_eq!(first.published, 80);

    tokio::time::timeout(
        Duration::from_secs(10),
        second.status.wait_for(|s| !s.standby),
    )
    .await
    .expect("the second copy takes over")
    .map(drop)
    .unwrap();
    appended.extend(append_orders(store.as_ref(), "order", 4, 10, &["OrderPlaced"]).await);
    caught_up(&mut second.status, store.as_ref()).await;
    let second = second.stop().await;
    assert_eq!(
        second.published, 40,
        "it starts after the first one's checkpoint"
    );

    let received = read_jetstream(&url, &js_stream, appended.len(), Duration::from_secs(5)).await;
    assert_eq!(received.len(), appended.len());
    let ids: HashSet<_> = received.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), appended.len(), "each event once");
    assert_stream_order(&received);
    delete_jetstream(&url, &js_stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_leaves_sealed_so_forgetting_reaches_relayed_messages_too() {
    use factum_toolkit::{CommandContext, Decider, Personal, Repository, forget_subject};

    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    enum Event {
        Registered {
            email: Personal<String>,
            plan: String,
        },
    }
    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;
    struct Customers;
    impl Decider for Customers {
        type State = ();
        type Command = ();
        type Event = Event;
        type Error = Never;
        const CATEGORY: &'static str = "customer";
        fn initial_state(&self) {}
        fn decide(&self, _: &(), _: &()) -> Result<Vec<Event>, Never> {
            Ok(vec![Event::Registered {
                email: Personal::new("cus-1", "ann@example.com".into()),
                plan: "gold".into(),
            }])
        }
        fn evolve(&self, _: (), _: &Event) {}
    }

    let url = nats_url();
    if !reachable("NATS", &url).await {
        return;
    }
    let (_dir, store) = engine_store();
    Repository::new(store.clone(), Customers)
        .execute("cus-1", (), &CommandContext::new())
        .await
        .unwrap();
    let js_stream = unique("PERSONAL");
    let config = NatsConfig {
        subject_prefix: unique("p"),
        jetstream_stream: Some(js_stream.clone()),
        ..NatsConfig::new(&url)
    };
    let relay = Relay::builder("customers-out", store.clone())
        .stream_prefixes(["customer-"])
        .translator(TypeMap::new().map("Registered", "customer.registered.v1", Payload::Data))
        .build()
        .unwrap();
    let mut running = spawn_relay(relay, NatsPublisher::new(config));
    caught_up(&mut running.status, store.as_ref()).await;
    let received = read_jetstream(&url, &js_stream, 1, Duration::from_secs(5)).await;
    assert_eq!(received.len(), 1);
    let payload = String::from_utf8_lossy(&received[0].payload).into_owned();
    assert!(!payload.contains("ann@example.com"), "{payload}");
    assert!(
        payload.contains("cus-1") && payload.contains("gold"),
        "{payload}"
    );
    forget_subject(store.as_ref(), "cus-1").await.unwrap();
    // What a consumer received can never be opened again: the only key is gone.
    assert!(store.keys().unwrap().key("cus-1").await.unwrap().is_none());
    running.stop().await;
}
