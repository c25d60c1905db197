//! For those who write a backend or a runner, not for applications: the rules of every write
//! and read ([`catalog`]), the checks an append and an import go through, the reads every
//! backend does the same way, claims for a backend that one process opens at a time and the
//! wait every processor, relay and saga manager goes through before it works, the JSON
//! validator, and — behind the `testkit` feature — the conformance suite every backend passes
//! (`conformance_tests!`).

pub mod catalog;
pub mod json;
mod read;
pub mod tag_index;
#[cfg(feature = "testkit")]
pub mod testkit;
mod write;

pub use crate::claim::{
    CLAIM_RETRY_INTERVAL, LocalClaims, check_claim_name, claim_unless_stopped, claim_when_free,
    until_stopped_or_lost,
};
pub use crate::store::{validate_append, validate_import};
pub use read::read_visible;
pub use write::{Job, Reply, group};
