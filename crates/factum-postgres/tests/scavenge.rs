//! Scavenging on PostgreSQL beyond the conformance suite: events past their maximum age go,
//! and verification tells the gaps a scavenge leaves from lost events.
#![allow(clippy::unwrap_used)]
mod common;

use factum_core::backend::testkit::{
    FILL_HIDDEN, aged_events, check_after, fill_for_scavenge, hidden, scavenge_event, shown,
};
use factum_core::{
    EventStore, ExpectedState, ScavengeOptions, StoreError, StreamMetadata, StreamName,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aged_events_go_and_verification_tells_scavenged_gaps_from_lost_events() {
    let Some((store, schema)) = common::fresh("scav").await else {
        return;
    };
    fill_for_scavenge(&store).await;
    for i in 0..4 {
        let aged = StreamName::new(format!("aged-{i}")).unwrap();
        store
            .set_metadata(
                &aged,
                StreamMetadata {
                    max_age_secs: Some(3600),
                    ..StreamMetadata::default()
                },
            )
            .await
            .unwrap();
        let old = aged_events(&aged, 10);
        store.import(old).await.unwrap();
        let new = (10..12).map(|r| scavenge_event(aged.as_str(), r)).collect();
        store.append(&aged, ExpectedState::Any, new).await.unwrap();
    }
    let before = shown(&store).await;
    let hidden = hidden(&before);
    assert_eq!(hidden.len(), FILL_HIDDEN + 4 * 10);
    assert_eq!(store.verify(|_, _| {}).await.unwrap().removed, 0);

    let report = store
        .scavenge(ScavengeOptions::default(), &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.events_removed, hidden.len() as u64, "{report:?}");
    check_after(&before, &shown(&store).await, &hidden, true);
    let verified = store.verify(|_, _| {}).await.unwrap();
    assert_eq!(verified.removed, hidden.len() as u64, "{verified:?}");
    assert_eq!(verified.events, (before.all.len() - hidden.len()) as u64);

    // Two scavenges at once: the second is told one is running.
    let (a, b) = tokio::join!(
        store.scavenge(ScavengeOptions::default(), &|_, _| {}),
        store.scavenge(ScavengeOptions::default(), &|_, _| {})
    );
    assert!(
        matches!(
            (&a, &b),
            (Ok(_), Err(StoreError::Busy(_))) | (Err(StoreError::Busy(_)), Ok(_)) | (Ok(_), Ok(_))
        ),
        "{a:?} {b:?}"
    );

    // An event deleted by hand where no scavenge went is lost, and said so.
    let (client, connection) = common::connect().await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "DELETE FROM {0}.events WHERE stream = 'kept-3' AND revision = 2",
            schema.0
        ))
        .await
        .unwrap();
    let lost = store.verify(|_, _| {}).await;
    assert!(
        matches!(&lost, Err(StoreError::Corrupted { reason, .. }) if reason.contains("kept-3")),
        "{lost:?}"
    );
}
