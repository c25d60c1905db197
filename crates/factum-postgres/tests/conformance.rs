//! The PostgreSQL store passes the conformance suite, against the real server.
#![allow(clippy::unwrap_used)]
mod common;

async fn fresh() -> Option<(factum_postgres::PgStore, common::Schema)> {
    common::fresh("c").await
}

factum_core::conformance_tests!(optional fresh);
