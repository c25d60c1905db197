//! The in-memory store passes the conformance suite.
#![allow(clippy::unwrap_used)]
use factum_core::MemoryStore;

async fn fresh() -> (MemoryStore, ()) {
    (MemoryStore::new(), ())
}

factum_core::conformance_tests!(fresh);
