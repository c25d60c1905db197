//! Byte layout of segment files (see `docs/format.md`). All integers are little-endian.
//!
//! ```text
//! segment   = header(32) frame*
//! header    = magic "FACTUMLG" | version u32 | segment u32 | first_position u64 | crc u32 | zero u32
//! frame     = magic u32 | body_len u32 | first_position u64 | count u32 | crc u32 | body
//! body      = record{count}
//! record    = len u32 | crc u32 | revision u64 | recorded_at_us u64 | id [16] | content u8 |
//!             flags u8 | stream_len u16 | type_len u16 | zero u16 | data_len u32 |
//!             metadata_len u32 | stream | type | data | metadata
//! ```
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

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err(format!("segment header is {} bytes, needs 32", bytes.len()));
        }
        if &bytes[0..8] != SEGMENT_MAGIC {
            return Err("not a Factum segment (bad magic)".into());
        }
        if crc32c::crc32c(&bytes[0..24]) != u32_at(bytes, 24) || u32_at(bytes, 28) != 0 {
            return Err("segment header checksum mismatch".into());
        }
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(format!("segment format version {version} is not supported"));
        }
        Ok(SegmentHeader {
            segment: u32_at(bytes, 12),
            first_position: u64_at(bytes, 16),
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
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < FRAME_HEADER_BYTES {
            return Err("frame header is cut short".into());
        }
        if u32_at(bytes, 0) != FRAME_MAGIC {
            return Err("bad frame magic".into());
        }
        let header = FrameHeader {
            body_len: u32_at(bytes, 4),
            first_position: u64_at(bytes, 8),
            count: u32_at(bytes, 16),
            crc: u32_at(bytes, 20),
        };
        if header.body_len as usize > FRAME_BODY_BYTES_MAX {
            return Err(format!(
                "frame length {} is over the limit",
                header.body_len
            ));
        }
        Ok(header)
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
            + record.metadata.len();
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
        buf.extend_from_slice(&[0u8; 2]);
        buf.extend_from_slice(&(record.data.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(record.metadata.len() as u32).to_le_bytes());
        buf.extend_from_slice(record.stream.as_bytes());
        buf.extend_from_slice(record.event_type.as_bytes());
        buf.extend_from_slice(record.data);
        buf.extend_from_slice(record.metadata);
        let crc = crc32c::crc32c(&buf[at + 8..]);
        buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        self.count += 1;
        at
    }

    /// Writes the frame header; the frame is complete.
    pub fn finish(self, buf: &mut [u8]) {
        let body_len = (buf.len() - self.start - FRAME_HEADER_BYTES) as u32;
        let crc = FrameHeader::checksum(
            body_len,
            self.first_position,
            self.count,
            &buf[self.start + FRAME_HEADER_BYTES..],
        );
        let header = &mut buf[self.start..self.start + FRAME_HEADER_BYTES];
        header[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&body_len.to_le_bytes());
        header[8..16].copy_from_slice(&self.first_position.to_le_bytes());
        header[16..20].copy_from_slice(&self.count.to_le_bytes());
        header[20..24].copy_from_slice(&crc.to_le_bytes());
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
    (bytes.len() >= 4).then(|| u32_at(bytes, 0) as usize)
}

/// Decodes one record that starts at `chunk[at]` and checks its checksum. Data and metadata are
/// copied out, so the chunk can be reused.
pub fn decode_record(chunk: &[u8], at: usize, position: u64) -> Result<RecordedEvent, String> {
    let bytes = chunk.get(at..).ok_or("record starts past the end")?;
    let record = view_record(bytes)?;
    if crc32c::crc32c(&bytes[8..record.len]) != u32_at(bytes, 4) {
        return Err("record checksum mismatch".into());
    }
    let content_type = match bytes[40] {
        0 => ContentType::Json,
        1 => ContentType::Binary,
        other => return Err(format!("unknown content type {other}")),
    };
    Ok(RecordedEvent {
        stream: StreamName::new(record.stream).map_err(|e| e.to_string())?,
        revision: record.revision,
        position,
        id: record.id,
        event_type: record.event_type.to_owned(),
        content_type,
        data: Bytes::copy_from_slice(record.data),
        metadata: Bytes::copy_from_slice(record.metadata),
        recorded_at_us: u64_at(bytes, 16),
    })
}

/// The id of a record, after checking its checksum.
pub fn record_id(bytes: &[u8]) -> Result<Uuid, String> {
    let len = record_len(bytes).ok_or("record length is cut short")?;
    if len < RECORD_FIXED_BYTES || len > bytes.len() {
        return Err(format!("record length {len} does not fit"));
    }
    if crc32c::crc32c(&bytes[8..len]) != u32_at(bytes, 4) {
        return Err("record checksum mismatch".into());
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[24..40]);
    Ok(Uuid::from_bytes(id))
}

pub fn u16_at(bytes: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&bytes[at..at + 2]);
    u16::from_le_bytes(b)
}

pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The fields of a record that the index needs, borrowed from the frame.
pub struct RecordView<'a> {
    pub revision: u64,
    pub id: Uuid,
    pub stream: &'a str,
    pub event_type: &'a str,
    pub data: &'a [u8],
    pub metadata: &'a [u8],
    pub len: usize,
}

/// Reads a record's fields without checking its own checksum: for frames whose checksum,
/// which covers every record byte, was already checked.
pub fn view_record(bytes: &[u8]) -> Result<RecordView<'_>, String> {
    let len = record_len(bytes).ok_or("record length is cut short")?;
    if len < RECORD_FIXED_BYTES || len > bytes.len() {
        return Err(format!("record length {len} does not fit"));
    }
    let record = &bytes[..len];
    let stream_len = u16_at(record, 42) as usize;
    let type_len = u16_at(record, 44) as usize;
    let data_len = u32_at(record, 48) as usize;
    let metadata_len = u32_at(record, 52) as usize;
    if RECORD_FIXED_BYTES + stream_len + type_len + data_len + metadata_len != len {
        return Err("record field lengths do not add up".into());
    }
    let type_start = RECORD_FIXED_BYTES + stream_len;
    let data_start = type_start + type_len;
    let stream = std::str::from_utf8(&record[RECORD_FIXED_BYTES..type_start])
        .map_err(|_| "stream name is not UTF-8")?;
    let event_type = std::str::from_utf8(&record[type_start..data_start])
        .map_err(|_| "event type is not UTF-8")?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&record[24..40]);
    Ok(RecordView {
        revision: u64_at(record, 8),
        id: Uuid::from_bytes(id),
        stream,
        event_type,
        data: &record[data_start..data_start + data_len],
        metadata: &record[data_start + data_len..],
        len,
    })
}
