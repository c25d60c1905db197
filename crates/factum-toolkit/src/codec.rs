//! How domain events become stored events and back: the variant name is the event type, the
//! variant's fields are the data, and the schema version travels in the metadata
//! (`$schemaVersion`). Old versions are brought up to date by [`Upcasters`] on the way in.

use std::collections::HashMap;
use std::marker::PhantomData;

use factum_core::{ContentType, NewEvent, RecordedEvent};
use serde_json::Value;

use crate::{CommandContext, Decider};

/// Why an event could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Domain events must be enums in serde's default (externally tagged) representation.
    #[error("events must serialise as an externally tagged enum variant, got {0}")]
    NotAVariant(String),
    /// Serialising an event failed.
    #[error("event does not serialise: {0}")]
    Serialize(String),
    /// A stored event does not deserialise into today's event type.
    #[error("event '{event_type}' at position {position} does not decode: {reason}")]
    Decode {
        /// The stored type.
        event_type: String,
        /// Its position.
        position: u64,
        /// What went wrong.
        reason: String,
    },
    /// A stored event is of an older schema version and no upcaster takes it further.
    #[error("no upcaster takes '{event_type}' from version {version} to version {current}")]
    NoUpcaster {
        /// The stored type.
        event_type: String,
        /// The stored version.
        version: u32,
        /// The version today's code reads.
        current: u32,
    },
    /// A stored event was written by newer code than this.
    #[error("'{event_type}' version {version} is newer than this code's version {current}")]
    FutureVersion {
        /// The stored type.
        event_type: String,
        /// The stored version.
        version: u32,
        /// The version today's code reads.
        current: u32,
    },
    /// Personal data could not be sealed or opened.
    #[error(transparent)]
    Personal(#[from] crate::PersonalError),
}

type Step = Box<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// Steps that bring stored events of old schema versions up to date, keyed by
/// `(event type, version)` (the shape cqrs-es uses). Each step moves one event type from one
/// version to the next, or renames a type; steps chain until none applies.
///
/// ```
/// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
/// use factum::Upcasters;
/// use serde_json::json;
///
/// // `Paid {amount: euros}` (version 1) became `Deposited {cents}` (version 2).
/// let upcasters = Upcasters::default()
///     .rename("Paid", 1, "Deposited")
///     .upgrade("Deposited", 1, |mut data| {
///         let euros = data["amount"].as_u64().ok_or("no amount")?;
///         data = json!({ "cents": euros * 100 });
///         Ok(data)
///     });
/// let (event_type, version, data) =
///     upcasters.upcast("Paid".into(), 1, json!({"amount": 5})).unwrap();
/// assert_eq!((event_type.as_str(), version), ("Deposited", 2));
/// assert_eq!(data, json!({"cents": 500}));
/// ```
///
/// A decider returns its upcasters from [`Decider::upcasters`] and the version it writes today
/// from [`Decider::event_version`]; the repository applies them when it loads.
#[derive(Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), (String, u32, Step)>,
}

impl Upcasters {
    /// Changes the data of `event_type` at `from_version` into version `from_version + 1`.
    pub fn upgrade(
        mut self,
        event_type: impl Into<String>,
        from_version: u32,
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        let event_type = event_type.into();
        self.steps.insert(
            (event_type.clone(), from_version),
            (event_type, from_version + 1, Box::new(step)),
        );
        self
    }

    /// Reads stored `old_type` events of `version` as `new_type` events of the same version.
    pub fn rename(
        mut self,
        old_type: impl Into<String>,
        version: u32,
        new_type: impl Into<String>,
    ) -> Self {
        self.steps.insert(
            (old_type.into(), version),
            (new_type.into(), version, Box::new(Ok)),
        );
        self
    }

    fn applies(&self, event_type: &str, version: u32) -> bool {
        !self.steps.is_empty() && self.steps.contains_key(&(event_type.to_owned(), version))
    }

    /// Runs the steps that apply; returns the final type, version and data.
    pub fn upcast(
        &self,
        mut event_type: String,
        mut version: u32,
        mut data: Value,
    ) -> Result<(String, u32, Value), String> {
        // A bound, so that a cycle of renames cannot loop forever.
        for _ in 0..64 {
            let Some((to_type, to_version, step)) = self.steps.get(&(event_type.clone(), version))
            else {
                return Ok((event_type, version, data));
            };
            data = step(data)?;
            event_type = to_type.clone();
            version = *to_version;
        }
        Err(format!(
            "upcasting '{event_type}' did not finish in 64 steps"
        ))
    }
}

/// The stored type and JSON data of a variant of a serde enum in its default (externally
/// tagged) representation: the variant's name and its fields.
pub(crate) fn split_variant<E: serde::Serialize>(event: &E) -> Result<(String, Value), CodecError> {
    match serde_json::to_value(event).map_err(|e| CodecError::Serialize(e.to_string()))? {
        Value::String(unit) => Ok((unit, Value::Null)),
        Value::Object(map) if map.len() == 1 => {
            let Some((event_type, data)) = map.into_iter().next() else {
                return Err(CodecError::NotAVariant("an empty object".into()));
            };
            Ok((event_type, data))
        }
        other => Err(CodecError::NotAVariant(other.to_string())),
    }
}

/// Encodes a decider's events for the store and decodes them back, upcasting old versions.
pub struct EventCodec<D: Decider> {
    upcasters: Upcasters,
    _decider: PhantomData<fn() -> D>,
}

#[derive(serde::Deserialize)]
struct VersionOnly {
    #[serde(rename = "$schemaVersion", default)]
    schema_version: Option<u32>,
}

impl<D: Decider> EventCodec<D> {
    /// A codec with the decider's upcasters.
    pub fn new(decider: &D) -> Self {
        EventCodec {
            upcasters: decider.upcasters(),
            _decider: PhantomData,
        }
    }

    /// The stored type and JSON data of an event.
    pub fn split(event: &D::Event) -> Result<(String, Value), CodecError> {
        split_variant(event)
    }

    /// The event to append, with the context's correlation and causation in its metadata.
    /// An event with [`Personal`](crate::Personal) fields is refused here (they would be
    /// stored in the clear): the repository seals them with the store's keys.
    pub fn encode(
        &self,
        decider: &D,
        event: &D::Event,
        context: &CommandContext,
    ) -> Result<NewEvent, CodecError> {
        let (event_type, mut data) = Self::split(event)?;
        crate::personal::refuse_plain(&mut data)?;
        self.finish(decider, event_type, data, context)
    }

    /// The event to append from its type and (sealed) data.
    pub(crate) fn finish(
        &self,
        decider: &D,
        event_type: String,
        data: Value,
        context: &CommandContext,
    ) -> Result<NewEvent, CodecError> {
        let version = decider.event_version(&event_type);
        Ok(NewEvent {
            id: uuid::Uuid::now_v7(),
            content_type: ContentType::Json,
            data: to_bytes(&data)?,
            metadata: to_bytes(&context.metadata(version))?,
            event_type,
            tags: Vec::new(),
        })
    }

    /// Today's event for a stored one.
    pub fn decode(&self, decider: &D, recorded: &RecordedEvent) -> Result<D::Event, CodecError> {
        self.decode_data(decider, recorded, &recorded.data)
    }

    /// Today's event for a stored one, with `data` read in place of its own (its personal
    /// data opened).
    pub(crate) fn decode_data(
        &self,
        decider: &D,
        recorded: &RecordedEvent,
        data: &[u8],
    ) -> Result<D::Event, CodecError> {
        let bad = |reason: String| CodecError::Decode {
            event_type: recorded.event_type.clone(),
            position: recorded.position,
            reason,
        };
        let version = stored_version(recorded);
        let current = decider.event_version(&recorded.event_type);
        if version == current && !self.upcasters.applies(&recorded.event_type, version) {
            // The common case: read the stored bytes straight into the enum.
            let mut text = Vec::with_capacity(data.len() + recorded.event_type.len() + 8);
            text.push(b'{');
            serde_json::to_writer(&mut text, &recorded.event_type)
                .map_err(|e| bad(e.to_string()))?;
            text.push(b':');
            text.extend_from_slice(data);
            text.push(b'}');
            // One UTF-8 check of the whole text is cheaper than serde's check of each string.
            let text = String::from_utf8(text).map_err(|e| bad(e.to_string()))?;
            return serde_json::from_str(&text).map_err(|e| bad(e.to_string()));
        }
        if version > current && !self.upcasters.applies(&recorded.event_type, version) {
            return Err(CodecError::FutureVersion {
                event_type: recorded.event_type.clone(),
                version,
                current,
            });
        }
        let data: Value = serde_json::from_slice(data).map_err(|e| bad(e.to_string()))?;
        let (event_type, version, data) = self
            .upcasters
            .upcast(recorded.event_type.clone(), version, data)
            .map_err(bad)?;
        let current = decider.event_version(&event_type);
        if version != current {
            return Err(CodecError::NoUpcaster {
                event_type,
                version,
                current,
            });
        }
        let tagged = if data.is_null() {
            Value::String(event_type)
        } else {
            Value::Object([(event_type, data)].into_iter().collect())
        };
        serde_json::from_value(tagged).map_err(|e| bad(e.to_string()))
    }
}

/// The schema version a stored event was written with (1 when its metadata says none).
fn stored_version(recorded: &RecordedEvent) -> u32 {
    if recorded.metadata.is_empty() {
        return 1;
    }
    serde_json::from_slice::<VersionOnly>(&recorded.metadata)
        .ok()
        .and_then(|m| m.schema_version)
        .unwrap_or(1)
}

fn to_bytes(value: &Value) -> Result<bytes::Bytes, CodecError> {
    serde_json::to_vec(value)
        .map(bytes::Bytes::from)
        .map_err(|e| CodecError::Serialize(e.to_string()))
}
