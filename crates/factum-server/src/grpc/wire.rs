//! The event of a read answer (`ReadResp.ReadEvent.RecordedEvent`), encoded by hand.
//!
//! Every event a read or a subscription delivers goes through here, so it is written
//! straight from Factum's event onto the wire: the metadata map's three entries (`type`,
//! `content-type`, `created`) from the event's fields, the id in the form the reader asked
//! for, and data, metadata and stream name without a copy — no map, no owned keys, no id
//! string. The bytes are those prost writes for the message the protocol defines (the tests
//! compare them), so every client reads them as it reads KurrentDB's. Decoding (for Rust
//! programs that read from a Factum server, as `factum bench` does) takes the same fields
//! back, reading the metadata map's entries where they lie instead of copying each key and
//! value.

use bytes::{Buf, BufMut, Bytes};
use factum_core::ContentType;
use prost::DecodeError;
use prost::encoding::{self, DecodeContext, WireType};
use uuid::Uuid;

/// How an answer writes event ids: as the reader asked (`uuid_option`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UuidForm {
    /// Two signed 64-bit halves (`UUID.structured`).
    #[default]
    Structured,
    /// The hyphenated text (`UUID.string`).
    Text,
}

/// An event as a read answer carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    /// The event's id.
    pub id: Uuid,
    /// The form the id goes on the wire in.
    pub form: UuidForm,
    /// The stream's name (`stream_identifier.stream_name`).
    pub stream: Bytes,
    /// Its place in the stream.
    pub stream_revision: u64,
    /// The protocol's commit position (Factum's position plus one), also sent as the prepare
    /// position.
    pub commit_position: u64,
    /// The metadata map's `type`.
    pub event_type: String,
    /// The metadata map's `content-type`.
    pub content_type: ContentType,
    /// The metadata map's `created`: 100-ns ticks since the Unix epoch.
    pub created: u64,
    /// Factum's event metadata (`custom_metadata`).
    pub custom_metadata: Bytes,
    /// The payload.
    pub data: Bytes,
}

impl Default for RecordedEvent {
    fn default() -> Self {
        RecordedEvent {
            id: Uuid::nil(),
            form: UuidForm::Structured,
            stream: Bytes::new(),
            stream_revision: 0,
            commit_position: 0,
            event_type: String::new(),
            content_type: ContentType::Binary,
            created: 0,
            custom_metadata: Bytes::new(),
            data: Bytes::new(),
        }
    }
}

/// The metadata keys of an event on the wire.
pub(crate) const TYPE_KEY: &str = "type";
pub(crate) const CONTENT_TYPE_KEY: &str = "content-type";
pub(crate) const CREATED_KEY: &str = "created";

/// A stream's name as the bytes of a message, shared with the event it came from.
pub(crate) struct NameBytes(pub(crate) factum_core::StreamName);

impl AsRef<[u8]> for NameBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_str().as_bytes()
    }
}

/// `StreamIdentifier.stream_name`.
const STREAM_NAME_TAG: u32 = 3;

/// A number in decimal, without an allocation.
struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(mut n: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

/// A length-delimited field's length on the wire, with its key and length prefix.
fn delimited_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

fn put_delimited(tag: u32, len: usize, buf: &mut impl BufMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(len as u64, buf);
}

/// A string or bytes field, left out when empty (as proto3 does).
fn bytes_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        delimited_len(tag, value.len())
    }
}

fn put_bytes(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_delimited(tag, value.len(), buf);
        buf.put_slice(value);
    }
}

/// A `uint64`/`int64` field, left out when 0.
fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(value)
    }
}

fn put_varint(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        encoding::encode_key(tag, WireType::Varint, buf);
        encoding::encode_varint(value, buf);
    }
}

/// One entry of the metadata map: a message of its key (1) and value (2).
fn entry_len(key: &str, value: &[u8]) -> usize {
    bytes_len(1, key.as_bytes()) + bytes_len(2, value)
}

impl RecordedEvent {
    fn id_len(&self) -> usize {
        match self.form {
            UuidForm::Text => delimited_len(2, 36),
            UuidForm::Structured => delimited_len(1, self.halves_len()),
        }
    }

    /// `UUID.structured`: the id's two halves.
    fn halves_len(&self) -> usize {
        let (high, low) = self.id.as_u64_pair();
        varint_len(1, high) + varint_len(2, low)
    }

    fn stream_identifier_len(&self) -> usize {
        bytes_len(STREAM_NAME_TAG, &self.stream)
    }

    /// The metadata map's entries, in key order (as a sorted map writes them).
    fn entries<R>(&self, mut each: impl FnMut(&'static str, &[u8]) -> R) -> [R; 3] {
        let created = Decimal::new(self.created);
        [
            each(CONTENT_TYPE_KEY, self.content_type.mime().as_bytes()),
            each(CREATED_KEY, created.as_bytes()),
            each(TYPE_KEY, self.event_type.as_bytes()),
        ]
    }
}

/// The generated messages that hold an event need what a prost message has.
impl prost::Message for RecordedEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_delimited(1, self.id_len(), buf);
        match self.form {
            UuidForm::Text => {
                let mut text = [0u8; 36];
                self.id.hyphenated().encode_lower(&mut text);
                put_bytes(2, &text, buf);
            }
            UuidForm::Structured => {
                let (high, low) = self.id.as_u64_pair();
                put_delimited(1, self.halves_len(), buf);
                put_varint(1, high, buf);
                put_varint(2, low, buf);
            }
        }
        put_delimited(2, self.stream_identifier_len(), buf);
        put_bytes(STREAM_NAME_TAG, &self.stream, buf);
        put_varint(3, self.stream_revision, buf);
        put_varint(4, self.commit_position, buf);
        put_varint(5, self.commit_position, buf);
        self.entries(|key, value| {
            put_delimited(6, entry_len(key, value), buf);
            put_bytes(1, key.as_bytes(), buf);
            put_bytes(2, value, buf);
        });
        put_bytes(7, &self.custom_metadata, buf);
        put_bytes(8, &self.data, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        use super::proto::event_store::client::{StreamIdentifier, Uuid as ProtoUuid, uuid};
        match tag {
            1 => {
                let mut id = ProtoUuid::default();
                encoding::message::merge(wire_type, &mut id, buf, ctx)?;
                (self.id, self.form) = match id.value {
                    Some(uuid::Value::String(text)) => (
                        Uuid::parse_str(&text).map_err(|_| malformed("an id not a UUID"))?,
                        UuidForm::Text,
                    ),
                    Some(uuid::Value::Structured(s)) => (
                        Uuid::from_u64_pair(
                            s.most_significant_bits as u64,
                            s.least_significant_bits as u64,
                        ),
                        UuidForm::Structured,
                    ),
                    None => (Uuid::nil(), UuidForm::Structured),
                };
                Ok(())
            }
            2 => {
                let mut identifier = StreamIdentifier::default();
                encoding::message::merge(wire_type, &mut identifier, buf, ctx)?;
                self.stream = identifier.stream_name;
                Ok(())
            }
            3 => encoding::uint64::merge(wire_type, &mut self.stream_revision, buf, ctx),
            // The prepare position is the commit position in every answer Factum writes.
            4 => encoding::skip_field(wire_type, tag, buf, ctx),
            5 => encoding::uint64::merge(wire_type, &mut self.commit_position, buf, ctx),
            6 => {
                let len = delimited(wire_type, buf, "a metadata entry past the message's end")?;
                // The entry read where it lies (no key or value copied) when the buffer holds
                // it in one piece, as a received message's buffer does; else copied first.
                if buf.chunk().len() >= len {
                    self.merge_entry(&buf.chunk()[..len], ctx)?;
                    buf.advance(len);
                } else {
                    let entry = buf.copy_to_bytes(len);
                    self.merge_entry(&entry, ctx)?;
                }
                Ok(())
            }
            7 => encoding::bytes::merge(wire_type, &mut self.custom_metadata, buf, ctx),
            8 => encoding::bytes::merge(wire_type, &mut self.data, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let entries: usize = self
            .entries(|key, value| delimited_len(6, entry_len(key, value)))
            .iter()
            .sum();
        delimited_len(1, self.id_len())
            + delimited_len(2, self.stream_identifier_len())
            + varint_len(3, self.stream_revision)
            + varint_len(4, self.commit_position)
            + varint_len(5, self.commit_position)
            + entries
            + bytes_len(7, &self.custom_metadata)
            + bytes_len(8, &self.data)
    }

    fn clear(&mut self) {
        *self = RecordedEvent::default();
    }
}

/// A field of the right wire type whose value is not what the protocol says.
#[allow(deprecated)] // prost names no other way for a hand-written message to refuse a value
fn malformed(what: &'static str) -> DecodeError {
    DecodeError::new(what)
}

/// The length of the length-delimited field whose key was just read, refused as `past_end`
/// when it is longer than what `buf` has left.
fn delimited(
    wire_type: WireType,
    buf: &mut impl Buf,
    past_end: &'static str,
) -> Result<usize, DecodeError> {
    encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
    usize::try_from(encoding::decode_varint(buf)?)
        .ok()
        .filter(|len| *len <= buf.remaining())
        .ok_or_else(|| malformed(past_end))
}

impl RecordedEvent {
    /// One entry of the metadata map (its key 1 and value 2, strings; the last of each wins,
    /// other fields are skipped, as prost reads a map entry): the fields it names taken into
    /// the event, unknown keys ignored.
    fn merge_entry(&mut self, mut entry: &[u8], ctx: DecodeContext) -> Result<(), DecodeError> {
        let (mut key, mut value): (&[u8], &[u8]) = (b"", b"");
        while !entry.is_empty() {
            let (tag, wire_type) = encoding::decode_key(&mut entry)?;
            let field = match tag {
                1 => &mut key,
                2 => &mut value,
                _ => {
                    encoding::skip_field(wire_type, tag, &mut entry, ctx.clone())?;
                    continue;
                }
            };
            let len = delimited(
                wire_type,
                &mut entry,
                "a metadata string past the entry's end",
            )?;
            (*field, entry) = entry.split_at(len);
        }
        let text = |bytes| {
            std::str::from_utf8(bytes).map_err(|_| malformed("a metadata string not UTF-8"))
        };
        match text(key)? {
            TYPE_KEY => text(value)?.clone_into(&mut self.event_type),
            CONTENT_TYPE_KEY => {
                self.content_type = match text(value)? {
                    "application/json" => ContentType::Json,
                    _ => ContentType::Binary,
                };
            }
            CREATED_KEY => {
                self.created = text(value)?
                    .parse()
                    .map_err(|_| malformed("a 'created' not a number"))?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message;

    use super::*;
    use crate::grpc::convert;
    use crate::grpc::proto::event_store::client::{StreamIdentifier, Uuid as ProtoUuid};

    /// The message as the protocol defines it, encoded by prost (a sorted map, so that the
    /// bytes can be compared).
    #[derive(Clone, PartialEq, prost::Message)]
    struct Reference {
        #[prost(message, optional, tag = "1")]
        id: Option<ProtoUuid>,
        #[prost(message, optional, tag = "2")]
        stream_identifier: Option<StreamIdentifier>,
        #[prost(uint64, tag = "3")]
        stream_revision: u64,
        #[prost(uint64, tag = "4")]
        prepare_position: u64,
        #[prost(uint64, tag = "5")]
        commit_position: u64,
        #[prost(btree_map = "string, string", tag = "6")]
        metadata: BTreeMap<String, String>,
        #[prost(bytes = "bytes", tag = "7")]
        custom_metadata: Bytes,
        #[prost(bytes = "bytes", tag = "8")]
        data: Bytes,
    }

    fn reference(event: &RecordedEvent) -> Reference {
        let stream = std::str::from_utf8(&event.stream).expect("a UTF-8 stream name");
        Reference {
            id: Some(convert::uuid_to_proto(event.id, event.form)),
            stream_identifier: Some(convert::stream_identifier(stream)),
            stream_revision: event.stream_revision,
            prepare_position: event.commit_position,
            commit_position: event.commit_position,
            metadata: [
                (TYPE_KEY.to_owned(), event.event_type.clone()),
                (
                    CONTENT_TYPE_KEY.to_owned(),
                    event.content_type.mime().to_owned(),
                ),
                (CREATED_KEY.to_owned(), event.created.to_string()),
            ]
            .into(),
            custom_metadata: event.custom_metadata.clone(),
            data: event.data.clone(),
        }
    }

    fn events() -> Vec<RecordedEvent> {
        let full = RecordedEvent {
            id: Uuid::now_v7(),
            form: UuidForm::Text,
            stream: Bytes::from_static(b"order-17"),
            stream_revision: 300,
            commit_position: 1 << 40,
            event_type: "OrderPlaced".to_owned(),
            content_type: ContentType::Json,
            created: 17_650_000_000_000_000,
            custom_metadata: Bytes::from_static(br#"{"$correlationId":"c-1"}"#),
            data: Bytes::from(vec![b'x'; 300]),
        };
        vec![
            full.clone(),
            RecordedEvent {
                form: UuidForm::Structured,
                ..full.clone()
            },
            // Zeros and empties are left out, as proto3 leaves them out; an id whose halves
            // are negative as int64.
            RecordedEvent {
                id: Uuid::from_u64_pair(u64::MAX, 0),
                form: UuidForm::Structured,
                stream_revision: 0,
                commit_position: 1,
                custom_metadata: Bytes::new(),
                data: Bytes::new(),
                created: 0,
                content_type: ContentType::Binary,
                ..full
            },
        ]
    }

    #[test]
    fn writes_the_bytes_prost_writes_for_the_protocols_message() {
        for event in events() {
            let ours = event.encode_to_vec();
            assert_eq!(ours.len(), event.encoded_len());
            assert_eq!(ours, reference(&event).encode_to_vec(), "{event:?}");
        }
    }

    #[test]
    fn reads_back_what_it_writes_and_what_prost_writes() {
        for event in events() {
            let again = RecordedEvent::decode(event.encode_to_vec().as_slice())
                .expect("our own encoding decodes");
            assert_eq!(again, event);
            let from_reference =
                RecordedEvent::decode(reference(&event).encode_to_vec().as_slice())
                    .expect("prost's encoding decodes");
            assert_eq!(from_reference, event);
        }
    }

    #[test]
    fn refuses_an_id_or_a_creation_time_it_cannot_read() {
        let event = events().remove(0);
        let mut bad_id = reference(&event);
        bad_id.id = Some(ProtoUuid {
            value: Some(
                crate::grpc::proto::event_store::client::uuid::Value::String(
                    "not-a-uuid".to_owned(),
                ),
            ),
        });
        let mut bad_created = reference(&event);
        bad_created
            .metadata
            .insert(CREATED_KEY.to_owned(), "yesterday".to_owned());
        for (bad, says) in [
            (bad_id, "an id not a UUID"),
            (bad_created, "a 'created' not a number"),
        ] {
            let error = RecordedEvent::decode(bad.encode_to_vec().as_slice())
                .expect_err("a malformed field is refused");
            assert!(error.to_string().contains(says), "{error}");
        }
    }

    #[test]
    fn reads_entries_in_a_buffer_of_pieces_with_fields_it_does_not_know() {
        for event in events() {
            let bytes = reference(&event).encode_to_vec();
            // The message in pieces of 7 bytes, so that entries straddle them.
            let pieces: Vec<Bytes> = bytes.chunks(7).map(Bytes::copy_from_slice).collect();
            let mut buf: Box<dyn Buf> = Box::new(Bytes::new());
            for piece in pieces {
                buf = Box::new(buf.chain(piece));
            }
            assert_eq!(
                RecordedEvent::decode(buf).expect("decodes in pieces"),
                event
            );
        }
        // An entry with a field of its own (3), and a `type` entry met twice: the last wins.
        let mut bytes = reference(&events()[0]).encode_to_vec();
        let mut entry = Vec::new();
        encoding::string::encode(1, &TYPE_KEY.to_owned(), &mut entry);
        encoding::uint64::encode(3, &9, &mut entry);
        encoding::string::encode(2, &"Renamed".to_owned(), &mut entry);
        encoding::bytes::encode(6, &entry, &mut bytes);
        let event = RecordedEvent::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(event.event_type, "Renamed");
    }

    #[test]
    fn refuses_an_entry_cut_short_too_long_or_not_utf8() {
        let mut cut = Vec::new();
        let mut entry = Vec::new();
        encoding::string::encode(1, &TYPE_KEY.to_owned(), &mut entry);
        entry.truncate(entry.len() - 1);
        encoding::bytes::encode(6, &entry, &mut cut);
        let mut not_utf8 = Vec::new();
        let mut entry = Vec::new();
        encoding::string::encode(1, &TYPE_KEY.to_owned(), &mut entry);
        encoding::bytes::encode(2, &vec![0xff, 0xfe], &mut entry);
        encoding::bytes::encode(6, &entry, &mut not_utf8);
        // An entry whose length says more than the message holds.
        let mut long = Vec::new();
        encoding::encode_key(6, WireType::LengthDelimited, &mut long);
        encoding::encode_varint(50, &mut long);
        long.extend_from_slice(&entry);
        for (bad, says) in [
            (cut, "past the entry's end"),
            (not_utf8, "not UTF-8"),
            (long, "past the message's end"),
        ] {
            let error = RecordedEvent::decode(bad.as_slice()).expect_err("refused");
            assert!(error.to_string().contains(says), "{error}");
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 1_000_001, u64::MAX] {
            assert_eq!(Decimal::new(n).as_bytes(), n.to_string().as_bytes());
        }
    }
}
