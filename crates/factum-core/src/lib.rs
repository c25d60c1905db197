//! The heart of Factum: the event model, the [`EventStore`] trait that every backend implements,
//! an in-memory store for tests, and — under [`backend`], for those who write a backend — the
//! rules every backend shares and (feature `testkit`) the conformance suite every backend must
//! pass. Applications use it through the `factum` crate.
//!
//! ```
//! # mod factum { pub use factum_core::*; }
//! use factum::{EventStore, ExpectedState, MemoryStore, NewEvent, StreamName};
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let cart = StreamName::new("cart-1").unwrap();
//! let event = NewEvent::json("ItemAdded", &serde_json::json!({"sku": "apple", "qty": 2})).unwrap();
//! let result = store.append(&cart, ExpectedState::NoStream, vec![event]).await.unwrap();
//! assert_eq!(result.last_revision, 0);
//! let events = store.read_stream(&cart, 0, factum::Direction::Forwards, 10).await.unwrap();
//! assert_eq!(events[0].event_type, "ItemAdded");
//! # });
//! ```

// A storage engine does not panic on what it reads or is given: errors are typed, slices are
// taken with `get`. Tests may.
#![cfg_attr(
    not(test),
    warn(clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

pub mod backend;
mod claim;
pub mod dcb;
mod error;
mod event;
mod keys;
mod memory;
mod scavenge;
mod store;
mod stream;
mod subscription;

pub use claim::Claim;
pub use dcb::{AppendCondition, DcbAppend, DcbEvent, Query, QueryItem, QueryRead};
pub use error::StoreError;
pub use event::{ContentType, NewEvent, RecordedEvent, now_micros};
pub use keys::{
    EventOpener, FileKeyStore, KeyStore, MemoryKeyStore, SUBJECT_CHARS_MAX, SubjectKey,
    validate_subject,
};
pub use memory::MemoryStore;
pub use scavenge::{
    CHECKPOINT_PREFIX, HiddenRule, ScavengeOptions, ScavengeReport, checkpoint_bound,
    hidden_for_good, hidden_rule,
};
pub use store::{
    AppendOptions, AppendResult, Checkpoint, Direction, EventStore, IntoStore, Shared, StreamInfo,
};
pub use stream::{CurrentRevision, ExpectedState, StreamMetadata, StreamName};
pub use subscription::{Subscription, SubscriptionFilter};

/// Limits that every backend enforces the same way.
pub mod limits {
    /// Longest stream name, in characters (Unicode scalar values, as JSON Schema's
    /// `maxLength` counts them): at most 2048 bytes of UTF-8.
    pub const STREAM_NAME_CHARS_MAX: usize = 512;
    /// How much longer a system stream's name (starting with `$`) may be, so that the streams
    /// the system derives from a stream's name fit: `$$name` (metadata), `$snapshot-name`.
    pub const SYSTEM_PREFIX_CHARS_MAX: usize = 64;
    /// Longest event type, in characters: at most 1024 bytes of UTF-8.
    pub const EVENT_TYPE_CHARS_MAX: usize = 256;
    /// Largest data or metadata of one event, in bytes.
    pub const EVENT_PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;
    /// Most events in one append.
    pub const APPEND_EVENTS_MAX: usize = 100_000;
    /// Largest total size of one append, in bytes.
    pub const APPEND_BYTES_MAX: usize = 64 * 1024 * 1024;
    /// Most tags on one event.
    pub const TAGS_PER_EVENT_MAX: usize = 32;
    /// Longest tag, in characters: at most 512 bytes of UTF-8.
    pub const TAG_CHARS_MAX: usize = 128;
    /// Most items in one query.
    pub const QUERY_ITEMS_MAX: usize = 64;
    /// Most types, and most tags, in one query item.
    pub const QUERY_ITEM_TERMS_MAX: usize = 32;
}
