//! Dynamic consistency boundaries (dcb.events): tags on events, queries over types and tags,
//! and appends that succeed only if no event matching a query was written after a position.
//!
//! A DCB event is still an event of a stream: an [`DcbEvent`] names its stream, or goes to
//! [`DCB_DEFAULT_STREAM`] (`dcb`, a user stream like any other) when it names none. So
//! everything that follows `$all` or a stream sees it as any other event, with its tags.
//! Queries select among the events of user streams; the store's own records (`$…` streams)
//! never match.

use serde::{Deserialize, Serialize};

use crate::{ExpectedState, NewEvent, RecordedEvent, StoreError, StreamName, limits};

/// The stream a DCB event goes to when it names none.
pub const DCB_DEFAULT_STREAM: &str = "dcb";

/// Checks an event's tags: at most [`limits::TAGS_PER_EVENT_MAX`], each 1 to
/// [`limits::TAG_CHARS_MAX`] characters with no control character, none twice.
pub fn check_tags(tags: &[String]) -> Result<(), StoreError> {
    if tags.len() > limits::TAGS_PER_EVENT_MAX {
        return Err(StoreError::invalid(format!(
            "an event has {} tags, the limit is {}",
            tags.len(),
            limits::TAGS_PER_EVENT_MAX
        )));
    }
    for (index, tag) in tags.iter().enumerate() {
        check_tag(tag)?;
        if tags.get(..index).unwrap_or_default().contains(tag) {
            return Err(StoreError::invalid(format!("tag '{tag}' appears twice")));
        }
    }
    Ok(())
}

/// Checks one tag: 1 to [`limits::TAG_CHARS_MAX`] characters, no control character.
pub fn check_tag(tag: &str) -> Result<(), StoreError> {
    if tag.is_empty() {
        return Err(StoreError::invalid("a tag is empty"));
    }
    let chars = tag.chars().count();
    if chars > limits::TAG_CHARS_MAX {
        return Err(StoreError::invalid(format!(
            "a tag is {chars} characters, the limit is {}",
            limits::TAG_CHARS_MAX
        )));
    }
    if tag.chars().any(char::is_control) {
        return Err(StoreError::invalid(format!(
            "tag {tag:?} contains a control character"
        )));
    }
    Ok(())
}

/// The schemas of tags and types in the API's description.
#[cfg(feature = "openapi")]
pub mod schemas {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};

    /// A list of tags: at most 32, each 1 to 128 characters with no control character, none
    /// twice.
    pub fn tags() -> ArrayBuilder {
        ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(crate::limits::TAG_CHARS_MAX))
                    .pattern(Some(r"^[^\u0000-\u001F\u007F-\u009F]+$")),
            )
            .max_items(Some(crate::limits::TAGS_PER_EVENT_MAX))
            .unique_items(true)
    }

    /// The tags of a query item: at most 32, each as an event's.
    pub fn query_tags() -> ArrayBuilder {
        ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(crate::limits::TAG_CHARS_MAX))
                    .pattern(Some(r"^[^\u0000-\u001F\u007F-\u009F]+$")),
            )
            .max_items(Some(crate::limits::QUERY_ITEM_TERMS_MAX))
    }

    /// A list of event types of a query item: at most 32, each 1 to 256 characters.
    pub fn types() -> ArrayBuilder {
        ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(crate::limits::EVENT_TYPE_CHARS_MAX)),
            )
            .max_items(Some(crate::limits::QUERY_ITEM_TERMS_MAX))
    }
}

/// One item of a [`Query`]: an event matches it when its type is one of `types` (or `types`
/// is empty) and it carries every tag of `tags`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QueryItem {
    /// Event types; empty: any type.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = schemas::types))]
    pub types: Vec<String>,
    /// Tags the event must all carry; empty: no tag needed.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = schemas::query_tags))]
    pub tags: Vec<String>,
}

impl QueryItem {
    /// An item of these types and tags.
    pub fn new<T: Into<String>, G: Into<String>>(
        types: impl IntoIterator<Item = T>,
        tags: impl IntoIterator<Item = G>,
    ) -> Self {
        QueryItem {
            types: types.into_iter().map(Into::into).collect(),
            tags: tags.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether an event of `event_type` with `tags` matches the item.
    pub fn matches(&self, event_type: &str, tags: &[String]) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self.tags.iter().all(|tag| tags.contains(tag))
    }
}

/// Which events a DCB read, subscription or condition is about: an event matches when it
/// matches any of the items; a query with no items matches every event (of user streams).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// The items; empty: every event.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    pub items: Vec<QueryItem>,
}

impl Query {
    /// The query that matches every event.
    pub fn all() -> Self {
        Query::default()
    }

    /// A query of one item.
    pub fn item<T: Into<String>, G: Into<String>>(
        types: impl IntoIterator<Item = T>,
        tags: impl IntoIterator<Item = G>,
    ) -> Self {
        Query {
            items: vec![QueryItem::new(types, tags)],
        }
    }

    /// This query with one more item.
    pub fn or<T: Into<String>, G: Into<String>>(
        mut self,
        types: impl IntoIterator<Item = T>,
        tags: impl IntoIterator<Item = G>,
    ) -> Self {
        self.items.push(QueryItem::new(types, tags));
        self
    }

    /// Whether an event of `stream` with `event_type` and `tags` matches.
    pub fn matches(&self, stream: &StreamName, event_type: &str, tags: &[String]) -> bool {
        !stream.is_system()
            && (self.items.is_empty() || self.items.iter().any(|i| i.matches(event_type, tags)))
    }

    /// [`Query::matches`] for a recorded event.
    pub fn matches_event(&self, event: &RecordedEvent) -> bool {
        self.matches(&event.stream, &event.event_type, &event.tags)
    }

    /// Checks the limits: at most [`limits::QUERY_ITEMS_MAX`] items, each with at most
    /// [`limits::QUERY_ITEM_TERMS_MAX`] types and as many tags, types and tags valid.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.items.len() > limits::QUERY_ITEMS_MAX {
            return Err(StoreError::invalid(format!(
                "a query has {} items, the limit is {}",
                self.items.len(),
                limits::QUERY_ITEMS_MAX
            )));
        }
        for (index, item) in self.items.iter().enumerate() {
            let bad = |why: String| StoreError::invalid(format!("query item {index}: {why}"));
            for (what, count) in [("types", item.types.len()), ("tags", item.tags.len())] {
                if count > limits::QUERY_ITEM_TERMS_MAX {
                    return Err(bad(format!(
                        "{count} {what}, the limit is {}",
                        limits::QUERY_ITEM_TERMS_MAX
                    )));
                }
            }
            for event_type in &item.types {
                crate::event::check_event_type(event_type).map_err(|e| bad(reason(e)))?;
            }
            for tag in &item.tags {
                check_tag(tag).map_err(|e| bad(reason(e)))?;
            }
        }
        Ok(())
    }
}

fn reason(error: StoreError) -> String {
    match error {
        StoreError::InvalidInput(why) => why,
        other => other.to_string(),
    }
}

/// The condition of a DCB append: it fails, writing nothing, if an event matching
/// `fail_if_events_match` was written after `after` (or at all, without `after`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AppendCondition {
    /// The events that must not have been written since `after`.
    pub fail_if_events_match: Query,
    /// The position the decision was based on (the `head` of the read); none: the start.
    #[serde(default, deserialize_with = "crate::backend::json::whole_number")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9223372036854775807_u64)
    )]
    pub after: Option<u64>,
}

impl AppendCondition {
    /// No event matching `query` after `after`.
    pub fn new(query: Query, after: Option<u64>) -> Self {
        AppendCondition {
            fail_if_events_match: query,
            after,
        }
    }
}

/// One event of a DCB append, with the stream it goes to.
#[derive(Clone, Debug, PartialEq)]
pub struct DcbEvent {
    /// Its stream ([`DCB_DEFAULT_STREAM`] unless named).
    pub stream: StreamName,
    /// The event, with its tags.
    pub event: NewEvent,
}

impl DcbEvent {
    /// An event for [`DCB_DEFAULT_STREAM`].
    pub fn new(event: NewEvent) -> Self {
        DcbEvent {
            stream: default_stream(),
            event,
        }
    }

    /// The event in `stream` instead.
    pub fn in_stream(mut self, stream: StreamName) -> Self {
        self.stream = stream;
        self
    }
}

/// [`DCB_DEFAULT_STREAM`] as a name (made once: every DCB event that names no stream takes it).
pub fn default_stream() -> StreamName {
    static DEFAULT: std::sync::LazyLock<StreamName> = std::sync::LazyLock::new(|| {
        // A fixed, valid name.
        StreamName::new(DCB_DEFAULT_STREAM).unwrap_or_else(|_| unreachable!("a valid stream name"))
    });
    DEFAULT.clone()
}

/// A DCB append: events (each in its stream), atomically, if the condition holds and each
/// stream named in `expected` is in its expected state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DcbAppend {
    /// The events, in the order they are written.
    pub events: Vec<DcbEvent>,
    /// The condition; none: the append always succeeds (but for `expected`).
    pub condition: Option<AppendCondition>,
    /// Expected states of streams (of the events' streams or others).
    pub expected: Vec<(StreamName, ExpectedState)>,
}

impl DcbAppend {
    /// An append of these events with no condition.
    pub fn new(events: impl IntoIterator<Item = DcbEvent>) -> Self {
        DcbAppend {
            events: events.into_iter().collect(),
            condition: None,
            expected: Vec::new(),
        }
    }

    /// With a condition.
    pub fn on_condition(mut self, condition: AppendCondition) -> Self {
        self.condition = Some(condition);
        self
    }

    /// With an expected state of a stream.
    pub fn expecting(mut self, stream: StreamName, expected: ExpectedState) -> Self {
        self.expected.push((stream, expected));
        self
    }

    /// Checks what every backend checks before a DCB append reaches storage.
    pub fn validate(&self) -> Result<(), StoreError> {
        let events = self.events.iter().map(|e| (&e.event, &e.stream));
        crate::store::validate_events(events, |index, stream| {
            if stream.is_system() {
                return Err(StoreError::invalid(format!(
                    "event {index}: stream '{stream}' is reserved for the system"
                )));
            }
            Ok(stream.as_str().len())
        })?;
        for (stream, _) in &self.expected {
            if stream.is_system() {
                return Err(StoreError::invalid(format!(
                    "stream '{stream}' is reserved for the system"
                )));
            }
        }
        if let Some(condition) = &self.condition {
            condition
                .fail_if_events_match
                .validate()
                .map_err(|e| StoreError::invalid(format!("condition: {}", reason(e))))?;
        }
        Ok(())
    }
}

/// What a DCB read returns: the matching events and the store's head when it read them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryRead {
    /// The events, in the direction read.
    pub events: Vec<RecordedEvent>,
    /// The position of the store's last event when the read was made (none: the store was
    /// empty): every matching event up to it is in `events` unless the limit cut them off.
    /// The `after` of a condition for a decision made on this read.
    pub head: Option<u64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_event_matches_an_item_by_type_and_every_tag_and_a_query_by_any_item() {
        let s = StreamName::new("course-1").unwrap();
        let q = Query::item(["Enrolled"], ["course:c1"]).or(Vec::<String>::new(), ["student:s1"]);
        assert!(q.matches(&s, "Enrolled", &tags(&["course:c1", "student:s9"])));
        assert!(!q.matches(&s, "Left", &tags(&["course:c1"])));
        assert!(q.matches(&s, "Left", &tags(&["student:s1"])));
        assert!(!q.matches(&s, "Enrolled", &tags(&["course:c2"])));
        let both = Query::item(Vec::<String>::new(), ["a", "b"]);
        assert!(!both.matches(&s, "X", &tags(&["a"])));
        assert!(both.matches(&s, "X", &tags(&["b", "a"])));
        assert!(Query::all().matches(&s, "X", &[]));
        let system = StreamName::new("$$course-1").unwrap();
        assert!(!Query::all().matches(&system, "X", &[]));
    }

    #[test]
    fn bad_tags_and_queries_are_refused() {
        for bad in [
            tags(&[""]),
            tags(&["a", "a"]),
            vec!["x".repeat(limits::TAG_CHARS_MAX + 1)],
            tags(&["a\nb"]),
            (0..=limits::TAGS_PER_EVENT_MAX)
                .map(|i| format!("t{i}"))
                .collect(),
        ] {
            assert!(
                matches!(check_tags(&bad), Err(StoreError::InvalidInput(_))),
                "{bad:?}"
            );
        }
        assert!(check_tags(&tags(&["course:c-7", "student:s-3"])).is_ok());
        let too_many = Query {
            items: vec![QueryItem::default(); limits::QUERY_ITEMS_MAX + 1],
        };
        assert!(too_many.validate().is_err());
        assert!(Query::item([""], ["a"]).validate().is_err());
        assert!(Query::item(["T"], [""]).validate().is_err());
        assert!(Query::item(["T"], ["a"]).validate().is_ok());
        let parsed: Result<Query, _> = serde_json::from_str(r#"{"items":[{"typs":["T"]}]}"#);
        assert!(parsed.is_err(), "unknown fields are refused");
    }
}
