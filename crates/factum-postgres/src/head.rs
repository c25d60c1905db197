//! Following the head of the log: every process that appends sends the new head with
//! `pg_notify` in the transaction that commits the events, so PostgreSQL delivers it only once
//! they are visible. A dedicated connection listens; it also polls the head now and then (a
//! notification may be lost with a connection), and after every reconnection.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;

use crate::conn::{Target, unavailable};

/// The notification channel of a schema.
pub(crate) fn channel(schema: &str) -> String {
    format!("{schema}_head")
}

/// Moves the head forward (never back).
pub(crate) fn advance(head: &watch::Sender<u64>, to: u64) {
    head.send_if_modified(|current| {
        if to > *current {
            *current = to;
            true
        } else {
            false
        }
    });
}

/// Follows the head until `stop` fires or is dropped.
pub(crate) async fn follow(
    target: Target,
    schema: String,
    head: Arc<watch::Sender<u64>>,
    poll: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            outcome = listen(&target, &schema, &head, poll) => {
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "following the PostgreSQL event store's head: reconnecting in {backoff:?}");
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One connection's life: listen, poll once, then take notifications and poll on a timer until
/// the connection fails.
async fn listen(
    target: &Target,
    schema: &str,
    head: &watch::Sender<u64>,
    poll: Duration,
) -> Result<(), factum_core::StoreError> {
    let (client, mut connection) = target.connect.connect().await.map_err(unavailable)?;
    let (notes, mut received) = mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) => {
                    if notes.send(note.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "the head listener's connection failed");
                    return;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {}", channel(schema)))
            .await
            .map_err(unavailable)?;
        let query = client
            .prepare("SELECT next_position FROM head")
            .await
            .map_err(unavailable)?;
        let mut timer = tokio::time::interval(poll);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                note = received.recv() => match note {
                    Some(payload) => {
                        if let Ok(next) = payload.parse::<u64>() {
                            advance(head, next);
                        }
                    }
                    None => {
                        return Err(factum_core::StoreError::Unavailable(
                            "the head listener's connection closed".into(),
                        ));
                    }
                },
                _ = timer.tick() => {
                    let row = client.query_one(&query, &[]).await.map_err(unavailable)?;
                    let next: i64 = row.get(0);
                    advance(head, next.max(0) as u64);
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}
