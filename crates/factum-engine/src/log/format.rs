//! Byte layout of segment files (see `docs/format.md`). All integers are little-endian.
//!
//! ```text
//! segment   = header(32) frame*
//! header    = magic "FACTUMLG" | version u32 | segment u32 | first_position u64 | crc u32 | zero u32
//! frame     = magic u32 | body_len u32 | first_position u64 | count u32 | crc u32 | body
//! body      = record{count}   (empty with count > 0: a gap frame, positions a scavenge removed)
//! record    = len u32 | crc u32 | revision u64 | recorded_at_us u64 | id [16] | content u8 |
//!             flags u8 | stream_len u16 | type_len u16 | tags_len u16 | data_len u32 |
//!             metadata_len u32 | stream | type | data | metadata | tags
//! tags      = (tag_len u16 | tag){n}    (tags_len bytes; 0 for an event without tags)
//! ```
//! Records written before tags existed have zero where `tags_len` is: no tags.
//! The frame crc covers the frame header's fields after it is zeroed and the body; the record
//! crc covers the record from `revision` on. A frame is one append: all of it or none of it.

use bytes::Bytes;
use factum_core::{ContentType, RecordedEvent, StreamName};
use uuid::Uuid;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"FACTUMLG";
/// The format version written by this build.
pub const FORMAT_VERSION: u32 = 1;
/// Size of a segment header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// First bytes of every frame.
pub const FRAME_MAGIC: u32 = 0xFAC7_F8A3;
/// Size of a frame header.
pub const FRAME_HEADER_BYTES: usize = 24;
/// Size of a record's fixed part.
pub const RECORD_FIXED_BYTES: usize = 56;
/// Largest frame body accepted when reading (a bigger length is corruption).
pub const FRAME_BODY_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Why bytes of a segment do not decode. The log turns each into `StoreError::Corrupted`
/// with the file and offset (or, at the end of the last segment, into a torn tail).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A segment header shorter than [`SEGMENT_HEADER_BYTES`].
    #[error("segment header is {0} bytes, needs 32")]
    HeaderCutShort(usize),
    /// The file does not start with [`SEGMENT_MAGIC`].
    #[error("not a Factum segment (bad magic)")]
    NotASegment,
    /// The segment header's checksum does not match.
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
    /// A format version this build does not read.
    #[error("segment format version {0} is not supported")]
    Version(u32),
    /// Fewer than [`FRAME_HEADER_BYTES`] bytes where a frame header should be.
    #[error("frame header is cut short")]
    FrameHeaderCutShort,
    /// No [`FRAME_MAGIC`] where a frame should start.
    #[error("bad frame magic")]
    FrameMagic,
    /// A frame body longer than [`FRAME_BODY_BYTES_MAX`].
    #[error("frame length {0} is over the limit")]
    FrameTooLong(u32),
    /// The frame's checksum does not match its bytes.
    #[error("frame checksum mismatch")]
    FrameChecksum,
    /// A record offset past the end of what was read.
    #[error("record starts past the end")]
    RecordPastEnd,
    /// Fewer than four bytes where a record's length should be.
    #[error("record length is cut short")]
    RecordLengthCutShort,
    /// A record length shorter than a record's fixed part, or longer than what holds it.
    #[error("record length {0} does not fit")]
    RecordLength(usize),
    /// The lengths of a record's fields do not add up to its length.
    #[error("record field lengths do not add up")]
    FieldLengths,
    /// The record's checksum does not match its bytes.
    #[error("record checksum mismatch")]
    RecordChecksum,
    /// A content type code this build does not know.
    #[error("unknown content type {0}")]
    ContentType(u8),
    /// A stream name or event type that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A stream name the store would not accept.
    #[error("{0}")]
    StreamName(String),
}

/// A segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment: u32,
    pub first_position: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.segment.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_position.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..24]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some(header) = bytes.get(..SEGMENT_HEADER_BYTES) else {
            return Err(DecodeError::HeaderCutShort(bytes.len()));
        };
        if header.get(0..8) != Some(SEGMENT_MAGIC.as_slice()) {
            return Err(DecodeError::NotASegment);
        }
        let checked = header.get(0..24).unwrap_or_default();
        if crc32c::crc32c(checked) != u32_at(header, 24)? || u32_at(header, 28)? != 0 {
            return Err(DecodeError::HeaderChecksum);
        }
        let version = u32_at(header, 8)?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::Version(version));
        }
        Ok(SegmentHeader {
            segment: u32_at(header, 12)?,
            first_position: u64_at(header, 16)?,
        })
    }
}

/// The fixed part of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub body_len: u32,
    pub first_position: u64,
    pub count: u32,
    pub crc: u32,
}

impl FrameHeader {
    /// Parses the 24 header bytes; checks only the magic and the length bound.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some(bytes) = bytes.get(..FRAME_HEADER_BYTES) else {
            return Err(DecodeError::FrameHeaderCutShort);
        };
        if u32_at(bytes, 0)? != FRAME_MAGIC {
            return Err(DecodeError::FrameMagic);
        }
        let header = FrameHeader {
            body_len: u32_at(bytes, 4)?,
            first_position: u64_at(bytes, 8)?,
            count: u32_at(bytes, 16)?,
            crc: u32_at(bytes, 20)?,
        };
        if header.body_len as usize > FRAME_BODY_BYTES_MAX {
            return Err(DecodeError::FrameTooLong(header.body_len));
        }
        Ok(header)
    }

    /// Checks the frame's checksum over `frame` (its header and body, as read).
    pub fn check(&self, frame: &[u8]) -> Result<(), DecodeError> {
        let body = frame.get(FRAME_HEADER_BYTES..self.total_len());
        let crc =
            body.map(|body| Self::checksum(self.body_len, self.first_position, self.count, body));
        if crc != Some(self.crc) {
            return Err(DecodeError::FrameChecksum);
        }
        Ok(())
    }

    /// The checksum a frame with this header and body must carry.
    pub fn checksum(body_len: u32, first_position: u64, count: u32, body: &[u8]) -> u32 {
        let mut fixed = [0u8; 16];
        fixed[0..4].copy_from_slice(&body_len.to_le_bytes());
        fixed[4..12].copy_from_slice(&first_position.to_le_bytes());
        fixed[12..16].copy_from_slice(&count.to_le_bytes());
        crc32c::crc32c_append(crc32c::crc32c(&fixed), body)
    }

    pub fn total_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.body_len as usize
    }

    /// A gap frame: `count` positions whose events a scavenge removed, and no body. Its
    /// positions stay taken; no record is read from it.
    pub fn is_gap(&self) -> bool {
        self.body_len == 0 && self.count > 0
    }
}

/// Appends a gap frame for the `count` positions from `first_position` (see
/// [`FrameHeader::is_gap`]).
pub fn encode_gap(buf: &mut Vec<u8>, first_position: u64, count: u32) {
    let crc = FrameHeader::checksum(0, first_position, count, &[]);
    buf.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(&first_position.to_le_bytes());
    buf.extend_from_slice(&count.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
}

/// Builds frames into a buffer; remembers where each record starts.
pub struct FrameBuilder {
    start: usize,
    first_position: u64,
    count: u32,
}

/// What one record holds when it is written.
pub struct RecordRef<'a> {
    pub stream: &'a str,
    pub revision: u64,
    pub recorded_at_us: u64,
    pub id: Uuid,
    pub content_type: ContentType,
    pub event_type: &'a str,
    pub data: &'a [u8],
    pub metadata: &'a [u8],
    pub tags: &'a [String],
}

/// Bytes the tags block of a record takes.
fn tags_len(tags: &[String]) -> usize {
    tags.iter().map(|t| 2 + t.len()).sum()
}

impl FrameBuilder {
    /// Starts a frame at the end of `buf`.
    pub fn begin(buf: &mut Vec<u8>, first_position: u64) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
        FrameBuilder {
            start,
            first_position,
            count: 0,
        }
    }

    /// Appends a record; returns its offset inside `buf`.
    pub fn push(&mut self, buf: &mut Vec<u8>, record: &RecordRef<'_>) -> usize {
        let at = buf.len();
        let len = RECORD_FIXED_BYTES
            + record.stream.len()
            + record.event_type.len()
            + record.data.len()
            + record.metadata.len()
            + tags_len(record.tags);
        buf.reserve(len);
        buf.extend_from_slice(&(len as u32).to_le_bytes());
        buf.extend_from_slice(&[0u8; 4]);
        buf.extend_from_slice(&record.revision.to_le_bytes());
        buf.extend_from_slice(&record.recorded_at_us.to_le_bytes());
        buf.extend_from_slice(record.id.as_bytes());
        buf.push(content_code(record.content_type));
        buf.push(0);
        buf.extend_from_slice(&(record.stream.len() as u16).to_le_bytes());
        buf.extend_from_slice(&(record.event_type.len() as u16).to_le_bytes());
        // Tags are checked before an append is planned: at most 32 of at most 512 bytes.
        buf.extend_from_slice(&(tags_len(record.tags) as u16).to_le_bytes());
        buf.extend_from_slice(&(record.data.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(record.metadata.len() as u32).to_le_bytes());
        buf.extend_from_slice(record.stream.as_bytes());
        buf.extend_from_slice(record.event_type.as_bytes());
        buf.extend_from_slice(record.data);
        buf.extend_from_slice(record.metadata);
        for tag in record.tags {
            buf.extend_from_slice(&(tag.len() as u16).to_le_bytes());
            buf.extend_from_slice(tag.as_bytes());
        }
        let crc = crc32c::crc32c(buf.get(at + 8..).unwrap_or_default());
        if let Some(slot) = buf.get_mut(at + 4..at + 8) {
            slot.copy_from_slice(&crc.to_le_bytes());
        }
        debug_assert!(record_id(buf.get(at..).unwrap_or_default()).is_ok());
        self.count += 1;
        at
    }

    /// Appends a record as it was read from another frame (its bytes, checksum included);
    /// returns its offset inside `buf`.
    pub fn push_raw(&mut self, buf: &mut Vec<u8>, record: &[u8]) -> usize {
        let at = buf.len();
        buf.extend_from_slice(record);
        self.count += 1;
        at
    }

    /// Writes the frame header; the frame is complete.
    pub fn finish(self, buf: &mut [u8]) {
        let body_len = (buf.len() - self.start - FRAME_HEADER_BYTES) as u32;
        let body = buf
            .get(self.start + FRAME_HEADER_BYTES..)
            .unwrap_or_default();
        let crc = FrameHeader::checksum(body_len, self.first_position, self.count, body);
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&body_len.to_le_bytes());
        header[8..16].copy_from_slice(&self.first_position.to_le_bytes());
        header[16..20].copy_from_slice(&self.count.to_le_bytes());
        header[20..24].copy_from_slice(&crc.to_le_bytes());
        if let Some(slot) = buf.get_mut(self.start..self.start + FRAME_HEADER_BYTES) {
            slot.copy_from_slice(&header);
        }
        debug_assert!(
            FrameHeader::decode(&header)
                .is_ok_and(|h| h.check(buf.get(self.start..).unwrap_or_default()).is_ok()),
            "a frame just built must check"
        );
    }
}

fn content_code(content_type: ContentType) -> u8 {
    match content_type {
        ContentType::Json => 0,
        ContentType::Binary => 1,
    }
}

/// The length a record says it has (its first four bytes), if they are there.
pub fn record_len(bytes: &[u8]) -> Option<usize> {
    u32_at(bytes, 0).ok().map(|len| len as usize)
}

/// Decodes one record that starts at `chunk[at]` and checks its checksum. Data and metadata are
/// copied out, so the chunk can be reused.
pub fn decode_record(chunk: &[u8], at: usize, position: u64) -> Result<RecordedEvent, DecodeError> {
    let bytes = chunk.get(at..).ok_or(DecodeError::RecordPastEnd)?;
    let record = view_record(bytes)?;
    check_record(bytes, record.len)?;
    let content_type = match record.content {
        0 => ContentType::Json,
        1 => ContentType::Binary,
        other => return Err(DecodeError::ContentType(other)),
    };
    Ok(RecordedEvent {
        stream: StreamName::new(record.stream)
            .map_err(|e| DecodeError::StreamName(e.to_string()))?,
        revision: record.revision,
        position,
        id: record.id,
        event_type: record.event_type.to_owned(),
        content_type,
        data: Bytes::copy_from_slice(record.data),
        metadata: Bytes::copy_from_slice(record.metadata),
        recorded_at_us: record.recorded_at_us,
        tags: decode_tags(record.tags)?,
    })
}

/// The tags of a record's tags block.
pub fn decode_tags(mut block: &[u8]) -> Result<Vec<String>, DecodeError> {
    let mut tags = Vec::new();
    while !block.is_empty() {
        let len = u16_at(block, 0).map_err(|_| DecodeError::FieldLengths)? as usize;
        let tag = block.get(2..2 + len).ok_or(DecodeError::FieldLengths)?;
        tags.push(
            std::str::from_utf8(tag)
                .map_err(|_| DecodeError::NotUtf8("tag"))?
                .to_owned(),
        );
        block = block.get(2 + len..).unwrap_or_default();
    }
    Ok(tags)
}

/// Checks the checksum of the record of `len` bytes at the start of `bytes`.
fn check_record(bytes: &[u8], len: usize) -> Result<(), DecodeError> {
    let covered = bytes.get(8..len).ok_or(DecodeError::RecordLength(len))?;
    if crc32c::crc32c(covered) != u32_at(bytes, 4)? {
        return Err(DecodeError::RecordChecksum);
    }
    Ok(())
}

/// The id of a record, after checking its checksum.
pub fn record_id(bytes: &[u8]) -> Result<Uuid, DecodeError> {
    let len = record_len(bytes).ok_or(DecodeError::RecordLengthCutShort)?;
    if len < RECORD_FIXED_BYTES || len > bytes.len() {
        return Err(DecodeError::RecordLength(len));
    }
    check_record(bytes, len)?;
    Ok(Uuid::from_bytes(array(bytes, 24)?))
}

/// `N` bytes of `bytes` at `at`; a record or header that is too short for them is damaged.
fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], DecodeError> {
    bytes
        .get(at..at.saturating_add(N))
        .and_then(|b| b.try_into().ok())
        .ok_or(DecodeError::RecordLength(bytes.len()))
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, DecodeError> {
    array(bytes, at).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, DecodeError> {
    array(bytes, at).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, DecodeError> {
    array(bytes, at).map(u64::from_le_bytes)
}

/// The fields of a record, borrowed from the frame.
pub struct RecordView<'a> {
    pub revision: u64,
    pub recorded_at_us: u64,
    pub id: Uuid,
    pub content: u8,
    pub stream: &'a str,
    pub event_type: &'a str,
    pub data: &'a [u8],
    pub metadata: &'a [u8],
    /// The tags block (see [`decode_tags`]).
    pub tags: &'a [u8],
    pub len: usize,
}

/// Reads a record's fields without checking its own checksum: for frames whose checksum,
/// which covers every record byte, was already checked.
pub fn view_record(bytes: &[u8]) -> Result<RecordView<'_>, DecodeError> {
    let len = record_len(bytes).ok_or(DecodeError::RecordLengthCutShort)?;
    if len < RECORD_FIXED_BYTES || len > bytes.len() {
        return Err(DecodeError::RecordLength(len));
    }
    let record = bytes.get(..len).ok_or(DecodeError::RecordLength(len))?;
    let stream_len = u16_at(record, 42)? as usize;
    let type_len = u16_at(record, 44)? as usize;
    let tags_len = u16_at(record, 46)? as usize;
    let data_len = u32_at(record, 48)? as usize;
    let metadata_len = u32_at(record, 52)? as usize;
    if RECORD_FIXED_BYTES + stream_len + type_len + data_len + metadata_len + tags_len != len {
        return Err(DecodeError::FieldLengths);
    }
    let type_start = RECORD_FIXED_BYTES + stream_len;
    let data_start = type_start + type_len;
    let metadata_start = data_start + data_len;
    let tags_start = metadata_start + metadata_len;
    let field = |range: std::ops::Range<usize>| record.get(range).ok_or(DecodeError::FieldLengths);
    let stream = std::str::from_utf8(field(RECORD_FIXED_BYTES..type_start)?)
        .map_err(|_| DecodeError::NotUtf8("stream name"))?;
    let event_type = std::str::from_utf8(field(type_start..data_start)?)
        .map_err(|_| DecodeError::NotUtf8("event type"))?;
    Ok(RecordView {
        revision: u64_at(record, 8)?,
        recorded_at_us: u64_at(record, 16)?,
        id: Uuid::from_bytes(array(record, 24)?),
        content: array::<1>(record, 40)?[0],
        stream,
        event_type,
        data: field(data_start..metadata_start)?,
        metadata: field(metadata_start..tags_start)?,
        tags: field(tags_start..len)?,
        len,
    })
}
