//! KurrentDB's official Rust client (crates.io `kurrentdb`), unchanged, on persistent
//! subscriptions against `factum serve`: create, read with acks and nacks, park, replay,
//! info, list, update, delete, groups on `$all` with a filter, errors — on the embedded store
//! and on PostgreSQL.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashSet;
use std::time::Duration;

use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, DeletePersistentSubscriptionOptions,
    Error as KError, EventData, GetPersistentSubscriptionInfoOptions,
    ListPersistentSubscriptionsOptions, NakAction, PersistentSubscription,
    PersistentSubscriptionEvent, PersistentSubscriptionOptions, PersistentSubscriptionToAllOptions,
    ReplayParkedMessagesOptions, StreamPosition, SubscribeToPersistentSubscriptionOptions,
    SubscriptionFilter, SystemConsumerStrategy,
};
use serde_json::json;

mod common;
use common::{Served, drop_schema, engine, postgres, serve};

fn client(served: &Served) -> Client {
    let settings: ClientSettings = format!("kurrentdb://localhost:{}?tls=false", served.port)
        .parse()
        .unwrap();
    Client::new(settings).unwrap()
}

fn events(kind: &str, n: u64) -> Vec<EventData> {
    (0..n)
        .map(|i| {
            EventData::json(kind, &json!({ "n": i }))
                .unwrap()
                .id(uuid::Uuid::new_v4())
        })
        .collect()
}

/// The next event with its retry count, within 10 s.
async fn next(subscription: &mut PersistentSubscription) -> (kurrentdb::ResolvedEvent, usize) {
    loop {
        let event = tokio::time::timeout(
            Duration::from_secs(10),
            subscription.next_subscription_event(),
        )
        .await
        .expect("an event within 10 s")
        .unwrap();
        if let PersistentSubscriptionEvent::EventAppeared { event, retry_count } = event {
            return (event, retry_count);
        }
    }
}

fn revision(event: &kurrentdb::ResolvedEvent) -> u64 {
    event.get_original_event().revision
}

async fn scenario(served: &Served) {
    let client = client(served);
    client
        .append_to_stream(
            "invoice-1",
            &AppendToStreamOptions::default(),
            events("Issued", 6),
        )
        .await
        .unwrap();
    let options = PersistentSubscriptionOptions::default()
        .start_from(StreamPosition::Start)
        .max_retry_count(1)
        .message_timeout(Duration::from_millis(500))
        .checkpoint_after(Duration::from_millis(50))
        .checkpoint_lower_bound(1)
        .consumer_strategy_name(SystemConsumerStrategy::RoundRobin);
    client
        .create_persistent_subscription("invoice-1", "mailer", &options)
        .await
        .unwrap();
    let again = client
        .create_persistent_subscription("invoice-1", "mailer", &options)
        .await
        .unwrap_err();
    assert!(matches!(again, KError::ResourceAlreadyExists), "{again:?}");

    // Two consumers share it.
    let subscribe = SubscribeToPersistentSubscriptionOptions::default().buffer_size(3);
    let mut one = client
        .subscribe_to_persistent_subscription("invoice-1", "mailer", &subscribe)
        .await
        .unwrap();
    let mut two = client
        .subscribe_to_persistent_subscription("invoice-1", "mailer", &subscribe)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (event, retries) = next(&mut one).await;
        assert_eq!(retries, 0);
        seen.push(revision(&event));
        if revision(&event) == 1 {
            one.nack(&event, NakAction::Park, "no address")
                .await
                .unwrap();
        } else {
            one.ack(&event).await.unwrap();
        }
    }
    for _ in 0..3 {
        let (event, _) = next(&mut two).await;
        seen.push(revision(&event));
        if revision(&event) == 4 {
            two.nack(&event, NakAction::Retry, "busy").await.unwrap();
        } else {
            two.ack(&event).await.unwrap();
        }
    }
    let unique: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(
        unique,
        (0..6).collect(),
        "disjoint shares, every event: {seen:?}"
    );
    // The retried one comes again with its retry count; acknowledged.
    let (event, retries) = tokio::select! {
        e = next(&mut one) => e,
        e = next(&mut two) => e,
    };
    assert_eq!((revision(&event), retries), (4, 1));
    // Acks go on the subscription they came from.
    let _ = one.ack(&event).await;
    let _ = two.ack(&event).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = client
        .get_persistent_subscription_info(
            "invoice-1",
            "mailer",
            &GetPersistentSubscriptionInfoOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(info.group_name, "mailer");
    assert_eq!(info.event_source, "invoice-1");
    assert_eq!(info.connections.len(), 2, "{info:?}");
    assert_eq!(info.stats.parked_message_count, 1, "{info:?}");
    assert_eq!(
        info.stats.last_checkpointed_event_revision,
        Some(5),
        "{info:?}"
    );
    let settings = info.settings.unwrap();
    assert_eq!(settings.max_retry_count, 1);
    assert_eq!(settings.message_timeout, Duration::from_millis(500));
    assert_eq!(settings.start_from, StreamPosition::Start);

    // The parked one, replayed.
    client
        .replay_parked_messages(
            "invoice-1",
            "mailer",
            &ReplayParkedMessagesOptions::default(),
        )
        .await
        .unwrap();
    let (event, retries) = tokio::select! {
        e = next(&mut one) => e,
        e = next(&mut two) => e,
    };
    assert_eq!((revision(&event), retries), (1, 0));
    let _ = one.ack(&event).await;
    let _ = two.ack(&event).await;

    // A group on $all with a filter, and the listings.
    client
        .append_to_stream(
            "receipt-1",
            &AppendToStreamOptions::default(),
            events("Printed", 2),
        )
        .await
        .unwrap();
    let to_all = PersistentSubscriptionToAllOptions::default()
        .start_from(StreamPosition::Start)
        .filter(SubscriptionFilter::on_stream_name().add_prefix("receipt-"));
    client
        .create_persistent_subscription_to_all("receipts", &to_all)
        .await
        .unwrap();
    let mut all = client
        .subscribe_to_persistent_subscription_to_all("receipts", &subscribe)
        .await
        .unwrap();
    for n in 0..2 {
        let (event, _) = next(&mut all).await;
        assert_eq!(event.get_original_event().stream_id(), "receipt-1");
        assert_eq!(revision(&event), n);
        all.ack(&event).await.unwrap();
    }
    let listed = client
        .list_all_persistent_subscriptions(&ListPersistentSubscriptionsOptions::default())
        .await
        .unwrap();
    let mut names: Vec<String> = listed.iter().map(|i| i.group_name.clone()).collect();
    names.sort();
    assert_eq!(names, ["mailer", "receipts"]);
    let for_stream = client
        .list_persistent_subscriptions_for_stream(
            "invoice-1",
            &ListPersistentSubscriptionsOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(for_stream.len(), 1);
    let to_all_info = client
        .get_persistent_subscription_info_to_all(
            "receipts",
            &GetPersistentSubscriptionInfoOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(to_all_info.event_source, "$all");

    // Update, then delete; an unknown group is not found.
    client
        .update_persistent_subscription("invoice-1", "mailer", &options.clone().max_retry_count(3))
        .await
        .unwrap();
    let updated = client
        .get_persistent_subscription_info(
            "invoice-1",
            "mailer",
            &GetPersistentSubscriptionInfoOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(updated.settings.unwrap().max_retry_count, 3);
    drop((one, two, all));
    client
        .delete_persistent_subscription(
            "invoice-1",
            "mailer",
            &DeletePersistentSubscriptionOptions::default(),
        )
        .await
        .unwrap();
    let gone = client
        .get_persistent_subscription_info(
            "invoice-1",
            "mailer",
            &GetPersistentSubscriptionInfoOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(gone, KError::ResourceNotFound), "{gone:?}");
    let missing = client
        .subscribe_to_persistent_subscription("invoice-1", "nope", &subscribe)
        .await;
    let missing = match missing {
        Err(e) => e,
        Ok(mut subscription) => subscription.next().await.unwrap_err(),
    };
    assert!(matches!(missing, KError::ResourceNotFound), "{missing:?}");
    client
        .delete_persistent_subscription_to_all(
            "receipts",
            &DeletePersistentSubscriptionOptions::default(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_subscriptions_with_the_rust_client_on_the_embedded_store() {
    let (store, _dir) = engine();
    let served = serve(store, factum_server::Config::default()).await;
    scenario(&served).await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_subscriptions_with_the_rust_client_on_postgresql() {
    let Some((store, schema)) = postgres("persistent").await else {
        return;
    };
    let served = serve(store, factum_server::Config::default()).await;
    scenario(&served).await;
    served.stop().await;
    drop_schema(&schema).await;
}

const TOKENS: &str = r#"
[[token]]
name = "ops"
secret = "ops-0123456789abcdef"
admin = [""]

[[token]]
name = "orders"
secret = "orders-0123456789"
read = ["order-"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managing_a_group_takes_admin_and_reading_it_read_on_its_source() {
    let (store, _dir) = engine();
    let served = serve(
        store,
        factum_server::Config {
            auth: Some(std::sync::Arc::new(
                factum_server::auth::Auth::from_toml(TOKENS).unwrap(),
            )),
            ..factum_server::Config::default()
        },
    )
    .await;
    let as_user = |user: &str, password: &str| {
        let settings: ClientSettings = format!(
            "kurrentdb://{user}:{password}@localhost:{}?tls=false",
            served.port
        )
        .parse()
        .unwrap();
        Client::new(settings).unwrap()
    };
    let ops = as_user("ops", "ops-0123456789abcdef");
    let orders = as_user("orders", "orders-0123456789");
    ops.append_to_stream(
        "order-1",
        &AppendToStreamOptions::default(),
        events("Placed", 2),
    )
    .await
    .unwrap();
    let options = PersistentSubscriptionOptions::default().start_from(StreamPosition::Start);
    let denied = orders
        .create_persistent_subscription("order-1", "g", &options)
        .await
        .unwrap_err();
    assert!(matches!(denied, KError::AccessDenied), "{denied:?}");
    ops.create_persistent_subscription("order-1", "g", &options)
        .await
        .unwrap();
    ops.create_persistent_subscription_to_all(
        "everything",
        &PersistentSubscriptionToAllOptions::default(),
    )
    .await
    .unwrap();
    // Read on order- streams: reads and acks the group, sees nothing of the $all one.
    let mut subscription = orders
        .subscribe_to_persistent_subscription(
            "order-1",
            "g",
            &SubscribeToPersistentSubscriptionOptions::default(),
        )
        .await
        .unwrap();
    let (event, _) = next(&mut subscription).await;
    subscription.ack(&event).await.unwrap();
    let info = orders
        .get_persistent_subscription_info_to_all(
            "everything",
            &GetPersistentSubscriptionInfoOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(info, KError::AccessDenied), "{info:?}");
    let listed = orders
        .list_all_persistent_subscriptions(&ListPersistentSubscriptionsOptions::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let denied = orders
        .delete_persistent_subscription(
            "order-1",
            "g",
            &DeletePersistentSubscriptionOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(denied, KError::AccessDenied), "{denied:?}");
    let denied = orders
        .restart_persistent_subscription_subsystem(&Default::default())
        .await
        .unwrap_err();
    assert!(matches!(denied, KError::AccessDenied), "{denied:?}");
    ops.restart_persistent_subscription_subsystem(&Default::default())
        .await
        .unwrap();
    drop(subscription);
    served.stop().await;
}
