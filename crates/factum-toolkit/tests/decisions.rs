//! `Decisions`: a conflict (an event matching the query appended between the read and the
//! append) is met by reading and deciding again; attempts run out into `Conflict` with
//! nothing written; an event the query matches that is not one of the decision's is a codec
//! error; on the in-memory store, the engine and PostgreSQL.
#![allow(clippy::unwrap_used)]
mod backends;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use factum_core::backend::catalog::WriteRequest;
use factum_core::{
    AppendResult, CurrentRevision, DcbAppend, DcbEvent, Direction, EventStore, NewEvent, Query,
    QueryRead, RecordedEvent, Shared, StoreError, StreamInfo, StreamMetadata, StreamName,
};
use factum_toolkit::{CommandContext, Decision, DecisionError, Decisions};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Ticket {
    Sold { seat: u32 },
}

#[derive(Debug, thiserror::Error)]
#[error("sold out")]
struct SoldOut;

/// Sells the next seat of a show of `seats`.
struct SellSeat {
    seats: u32,
}

impl Decision for SellSeat {
    type State = u32;
    type Command = ();
    type Event = Ticket;
    type Error = SoldOut;
    fn query(&self, _: &()) -> Query {
        Query::item(Vec::<String>::new(), ["show:1"])
    }
    fn initial_state(&self, _: &()) -> u32 {
        0
    }
    fn evolve(&self, sold: u32, _: &Ticket) -> u32 {
        sold + 1
    }
    fn decide(&self, sold: &u32, _: &()) -> Result<Vec<Ticket>, SoldOut> {
        if *sold >= self.seats {
            return Err(SoldOut);
        }
        Ok(vec![Ticket::Sold { seat: sold + 1 }])
    }
    fn tags(&self, _: &Ticket) -> Vec<String> {
        vec!["show:1".into()]
    }
}

/// A store where another seller sells a seat just before each of the first `interfere` of
/// our conditional appends.
struct Rival {
    inner: Arc<dyn EventStore>,
    interfere: u64,
    done: AtomicU64,
}

impl Shared for Rival {
    fn shared(&self) -> Arc<dyn EventStore> {
        self.inner.clone()
    }
}

#[async_trait]
impl EventStore for Rival {
    async fn write(&self, request: WriteRequest) -> Result<AppendResult, StoreError> {
        self.inner.write(request).await
    }
    async fn append_conditional(&self, append: DcbAppend) -> Result<u64, StoreError> {
        if self.done.fetch_add(1, Ordering::SeqCst) < self.interfere {
            let rival = NewEvent::json("Sold", &serde_json::json!({"seat": 0}))
                .unwrap()
                .with_tags(["show:1"]);
            self.inner
                .append_conditional(DcbAppend::new([DcbEvent::new(rival)]))
                .await?;
        }
        self.inner.append_conditional(append).await
    }
    async fn read_query(
        &self,
        q: &Query,
        a: Option<u64>,
        d: Direction,
        l: usize,
    ) -> Result<QueryRead, StoreError> {
        self.inner.read_query(q, a, d, l).await
    }
    async fn read_stream(
        &self,
        s: &StreamName,
        f: u64,
        d: Direction,
        l: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(s, f, d, l).await
    }
    async fn read_all(
        &self,
        f: u64,
        d: Direction,
        l: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(f, d, l).await
    }
    fn head(&self) -> u64 {
        self.inner.head()
    }
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }
    async fn stream_revision(&self, s: &StreamName) -> Result<CurrentRevision, StoreError> {
        self.inner.stream_revision(s).await
    }
    async fn get_metadata(&self, s: &StreamName) -> Result<Option<StreamMetadata>, StoreError> {
        self.inner.get_metadata(s).await
    }
    async fn list_streams(
        &self,
        p: &str,
        a: Option<&StreamName>,
        l: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        self.inner.list_streams(p, a, l).await
    }
    async fn read_checkpoint(&self, c: &str) -> Result<Option<u64>, StoreError> {
        self.inner.read_checkpoint(c).await
    }
    async fn claim(&self, name: &str) -> Result<Option<factum_core::Claim>, StoreError> {
        self.inner.claim(name).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_is_decided_again_on_a_fresh_read_and_attempts_run_out_writing_nothing() {
    for (kind, inner, _dir) in backends::all("decisions_conflict").await {
        let rival = Rival {
            inner: inner.clone(),
            interfere: 2,
            done: AtomicU64::new(0),
        };
        let decisions = Decisions::new(rival, SellSeat { seats: 10 });
        let done = decisions
            .execute(&(), &CommandContext::new())
            .await
            .unwrap();
        // Two rivals sold seats 1 and 2 in between: the third attempt sells seat 3.
        assert_eq!(done.attempts, 3, "{kind}");
        assert_eq!(done.events, [Ticket::Sold { seat: 3 }], "{kind}");
        assert_eq!(done.position, Some(2), "{kind}");
        let sold = inner
            .read_query(
                &SellSeat { seats: 0 }.query(&()),
                None,
                Direction::Forwards,
                10,
            )
            .await
            .unwrap();
        assert_eq!(sold.events.len(), 3, "{kind}");
        assert!(sold.events[2].tags.contains(&"show:1".to_owned()));
        let metadata = sold.events[2].metadata_json();
        assert!(
            metadata.contains_key("$correlationId"),
            "{kind}: {metadata:?}"
        );

        // With one attempt and a rival each time: nothing of ours is written.
        let rival = Rival {
            inner: inner.clone(),
            interfere: u64::MAX,
            done: AtomicU64::new(0),
        };
        let decisions = Decisions::new(rival, SellSeat { seats: 10 }).with_attempts_max(3);
        let head = inner.head();
        let error = decisions
            .execute(&(), &CommandContext::new())
            .await
            .unwrap_err();
        assert!(
            matches!(error, DecisionError::Conflict { attempts: 3 }),
            "{kind}: {error:?}"
        );
        assert_eq!(inner.head(), head + 3, "{kind}: only the rivals' seats");

        // Sold out: rejected, nothing written.
        let decisions = Decisions::new(inner.clone(), SellSeat { seats: 6 });
        let error = decisions
            .execute(&(), &CommandContext::new())
            .await
            .unwrap_err();
        assert!(matches!(error, DecisionError::Rejected(SoldOut)), "{kind}");
        assert_eq!(inner.head(), head + 3, "{kind}");

        // An event the query matches that is not one of the decision's.
        inner
            .append_conditional(DcbAppend::new([DcbEvent::new(
                NewEvent::json("Refunded", &1)
                    .unwrap()
                    .with_tags(["show:1"]),
            )]))
            .await
            .unwrap();
        let error = Decisions::new(inner.clone(), SellSeat { seats: 99 })
            .execute(&(), &CommandContext::new())
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                DecisionError::Codec {
                    position: Some(_),
                    ..
                }
            ),
            "{kind}: {error:?}"
        );
    }
}
