//! The in-memory store passes the conformance suite.
use factum_core::MemoryStore;

async fn fresh() -> (MemoryStore, ()) {
    (MemoryStore::new(), ())
}

factum_core::conformance_tests!(fresh);
