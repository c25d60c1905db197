//! The conformance suite: one function per guarantee of [`EventStore`](crate::EventStore). Every backend runs all of
//! them from its own tests with [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! async fn fresh() -> (MyStore, TempDir) { ... }
//! factum::conformance_tests!(fresh);
//! ```
//!
//! The panics, `expect`s and indexing here are the suite's assertions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    reason = "a test suite: its panics, expects and indexing are its assertions"
)]

mod appends;
mod checkpoints;
mod dcb;
mod reads;
mod scavenge;
mod streams;
mod subscriptions;

pub use appends::*;
pub use checkpoints::*;
pub use dcb::*;
pub use reads::*;
pub use scavenge::*;
pub use streams::*;
pub use subscriptions::*;

use crate::{NewEvent, StreamName};

/// Generates one `#[tokio::test]` per conformance check. `$make` is an async function returning
/// `(store, guard)`; the guard (a temporary directory, say) lives as long as the test.
///
/// A backend that needs a service (a database server) may skip where it is missing: with
/// `conformance_tests!(optional $make)`, `$make` returns `Option<(store, guard)>` and a test
/// that gets `None` passes without running (it should print why).
#[macro_export]
macro_rules! conformance_tests {
    (optional $make:path) => {
        $crate::conformance_tests!(@list $make, optional);
    };
    ($make:path) => {
        $crate::conformance_tests!(@list $make, required);
    };
    (@list $make:path, $mode:ident) => {
        $crate::conformance_tests!(@each $make, $mode;
            empty_append_writes_nothing,
            expected_states_are_checked,
            wrong_expected_revision_writes_nothing,
            concurrent_appenders_with_same_expected_revision_one_wins,
            multi_event_append_is_all_or_none,
            idempotent_reappend_returns_original_result,
            read_stream_forwards_backwards_and_limits,
            read_all_is_in_log_order,
            missing_stream_is_not_found,
            reserved_names_and_bad_events_are_rejected,
            subscription_switches_from_catch_up_to_live_without_gap_or_duplicate,
            filtered_subscription_delivers_only_matching_events,
            stream_subscription_follows_one_stream,
            soft_delete_hides_stream_and_revisions_continue,
            tombstone_forbids_writes_forever,
            metadata_written_expecting_the_metadata_streams_revision,
            metadata_limits_what_reads_return,
            list_streams_by_prefix,
            checkpoint_is_stored_with_append_and_only_moves_forward,
            checkpoint_can_be_saved_on_its_own,
            toolkit_streams_take_appends_other_system_streams_do_not,
            data_and_metadata_round_trip_byte_for_byte,
            a_name_is_claimed_by_one_holder_at_a_time,
            tags_round_trip_and_queries_select_by_type_and_tag,
            a_conditional_append_fails_if_a_match_follows_its_position_and_writes_nothing,
            dcb_appends_retried_with_the_same_ids_return_the_original_position,
            racing_conditional_appends_keep_every_invariant,
            query_subscription_catches_up_then_follows_live,
            bad_tags_queries_and_conditions_are_refused_and_write_nothing,
            a_scavenge_removes_what_metadata_hides_and_keeps_everything_else,
            a_scavenge_stops_at_its_bound,
            appends_and_subscribers_go_on_while_a_scavenge_runs
        );
    };
    (@each $make:path, required; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (store, _guard) = $make().await;
                $crate::backend::testkit::$name(store).await;
            }
        )*
    };
    (@each $make:path, optional; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some((store, _guard)) = $make().await {
                    $crate::backend::testkit::$name(store).await;
                }
            }
        )*
    };
}

pub(super) fn stream(name: &str) -> StreamName {
    StreamName::user(name).unwrap()
}

pub(super) fn event(n: u64) -> NewEvent {
    NewEvent::json("Counted", &serde_json::json!({ "n": n })).unwrap()
}

pub(super) fn events(count: u64) -> Vec<NewEvent> {
    (0..count).map(event).collect()
}

pub(super) fn n_of(e: &crate::RecordedEvent) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
    value["n"].as_u64().unwrap()
}
