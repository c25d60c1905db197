//! The embedded engine passes the conformance suite.
#![allow(clippy::unwrap_used)]
use factum_engine::{Engine, EngineOptions};

async fn fresh() -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // Small segments, so the suite also crosses segment boundaries.
    let options = EngineOptions {
        segment_bytes_limit: 64 * 1024,
        ..EngineOptions::default()
    };
    (Engine::open(dir.path(), options).unwrap(), dir)
}

factum_core::conformance_tests!(fresh);
