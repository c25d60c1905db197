//! The log: numbered segment files of checksummed frames, and the reading of them.

pub mod format;
pub mod recovery;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use factum_core::{RecordedEvent, StoreError};
use parking_lot::RwLock;

use format::{
    DecodeError, FRAME_HEADER_BYTES, FrameHeader, SEGMENT_HEADER_BYTES, SegmentHeader,
    decode_record, record_id, record_len,
};

/// Where an event's record starts: segment number in the top 24 bits, byte offset in the low 40.
pub fn pack(segment: u32, offset: u64) -> u64 {
    debug_assert!(offset < 1 << 40);
    (u64::from(segment) << 40) | offset
}

/// The inverse of [`pack`].
pub fn unpack(location: u64) -> (u32, u64) {
    ((location >> 40) as u32, location & ((1 << 40) - 1))
}

/// What a segment being rewritten by a scavenge is called until it is renamed into place.
pub const SCAVENGE_SUFFIX: &str = ".seg.scavenge";

/// The path of a segment file.
pub fn segment_path(log_dir: &Path, segment: u32) -> PathBuf {
    log_dir.join(format!("{segment:010}.seg"))
}

/// One segment file, open for reading.
pub struct Segment {
    pub number: u32,
    pub first_position: u64,
    pub path: PathBuf,
    file: File,
}

impl Segment {
    pub fn open(path: PathBuf) -> Result<(Self, u64), StoreError> {
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        let read = read_up_to(&file, &mut header, 0)?;
        let header =
            SegmentHeader::decode(header.get(..read).unwrap_or_default()).map_err(|reason| {
                StoreError::Corrupted {
                    file: path.clone(),
                    offset: 0,
                    reason: reason.to_string(),
                }
            })?;
        Ok((
            Segment {
                number: header.segment,
                first_position: header.first_position,
                path,
                file,
            },
            len,
        ))
    }

    /// Reads up to `len` bytes at `offset` into `buf` (fewer at the end of the file); returns
    /// how many. `buf` only grows, so a reused buffer costs no allocation.
    pub fn read_into(
        &self,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<usize, StoreError> {
        buf.resize(buf.len().max(len), 0);
        let into = buf.get_mut(..len).unwrap_or_default();
        Ok(read_up_to(&self.file, into, offset)?)
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    pub fn read(&self, offset: u64, len: usize) -> Result<Bytes, StoreError> {
        let mut buf = vec![0u8; len];
        let read = read_up_to(&self.file, &mut buf, offset)?;
        buf.truncate(read);
        Ok(Bytes::from(buf))
    }

    pub fn corrupted(&self, offset: u64, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupted {
            file: self.path.clone(),
            offset,
            reason: reason.to_string(),
        }
    }

    /// Checks that the segment starts where the one before it ended.
    pub fn expect_first_position(&self, next_position: u64) -> Result<(), StoreError> {
        if self.first_position != next_position {
            return Err(self.corrupted(
                0,
                format!(
                    "segment starts at position {}, expected {next_position}",
                    self.first_position
                ),
            ));
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends; returns how much was read.
pub fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|rest| !rest.is_empty()) {
        match file.read_at(rest, offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// All segments, shared by the writer (which adds new ones) and readers. The list is shared
/// with the snapshots taken of it (every read takes one) and copied only when it changes
/// while one is held.
pub struct Segments {
    pub log_dir: PathBuf,
    shared_dir: Arc<Path>,
    list: RwLock<Arc<Vec<Arc<Segment>>>>,
}

/// Bytes a sequential read fetches at once.
pub const SEQUENTIAL_CHUNK_BYTES: usize = 1024 * 1024;
/// Bytes a scattered read fetches at once.
pub const SCATTERED_CHUNK_BYTES: usize = 4096;
/// Bytes a read of events far apart fetches at once (a DCB query's: one tag's events are
/// spread over the log, so a larger chunk only copies bytes of other events).
pub const SPARSE_CHUNK_BYTES: usize = 1024;

impl Segments {
    pub fn new(log_dir: PathBuf, list: Vec<Arc<Segment>>) -> Self {
        Segments {
            shared_dir: Arc::from(log_dir.as_path()),
            log_dir,
            list: RwLock::new(Arc::new(list)),
        }
    }

    pub fn all(&self) -> Vec<Arc<Segment>> {
        self.list.read().as_ref().clone()
    }

    /// The segments as they are now. Take it under the index's lock together with the
    /// locations to read: a scavenge replaces a segment (under the index's write lock), and a
    /// location found before is an offset in the file it was found with.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            log_dir: self.shared_dir.clone(),
            list: self.list.read().clone(),
        }
    }

    pub fn push(&self, segment: Segment) {
        Arc::make_mut(&mut self.list.write()).push(Arc::new(segment));
    }

    /// Forgets the segments numbered after `number` (a failed write's, which hold nothing
    /// acknowledged). Readers holding them finish on them.
    pub fn remove_after(&self, number: u32) {
        let mut list = self.list.write();
        if list.iter().any(|s| s.number > number) {
            Arc::make_mut(&mut list).retain(|s| s.number <= number);
        }
    }

    /// Puts a rewritten segment in place of the one with its number (a scavenge, under the
    /// index's write lock). Readers holding the old one finish on the old file.
    pub fn replace(&self, segment: Segment) {
        let mut list = self.list.write();
        if let Some(slot) = Arc::make_mut(&mut list)
            .iter_mut()
            .find(|s| s.number == segment.number)
        {
            *slot = Arc::new(segment);
        }
    }

    /// The id of the record at a location, checksum checked.
    pub fn read_id(&self, location: u64) -> Result<uuid::Uuid, StoreError> {
        self.snapshot().read_id(location)
    }
}

/// The segments as they were when a read found its locations (see [`Segments::snapshot`]).
pub struct Snapshot {
    log_dir: Arc<Path>,
    list: Arc<Vec<Arc<Segment>>>,
}

impl Snapshot {
    pub fn get(&self, number: u32) -> Result<Arc<Segment>, StoreError> {
        let first = self.list.first().map_or(0, |s| s.number);
        number
            .checked_sub(first)
            .and_then(|i| self.list.get(i as usize))
            .cloned()
            .ok_or_else(|| StoreError::Corrupted {
                file: segment_path(&self.log_dir, number),
                offset: 0,
                reason: "the index points into a segment that does not exist".into(),
            })
    }

    /// Reads the events at the given (position, location) pairs, checking every record's
    /// checksum. Records are fetched `chunk_bytes` at a time (consecutive ones in large chunks)
    /// into a buffer that each thread reuses, so reads cost no page faults.
    pub fn read_events(
        &self,
        locations: &[(u64, u64)],
        chunk_bytes: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        thread_local! {
            static CHUNK: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        CHUNK.with(|chunk| {
            let mut chunk = chunk.borrow_mut();
            let mut events = Vec::with_capacity(locations.len());
            // The segment, file offset and length of what `chunk` holds.
            let mut held: Option<(Arc<Segment>, u64, usize)> = None;
            for &(position, location) in locations {
                let (number, offset) = unpack(location);
                let fits = |(segment, start, len): &(Arc<Segment>, u64, usize)| {
                    segment.number == number
                        && offset >= *start
                        && chunk
                            .get((offset - start) as usize..*len)
                            .and_then(record_len)
                            .is_some_and(|record| (offset - start) as usize + record <= *len)
                };
                if !held.as_ref().is_some_and(fits) {
                    let segment = self.get(number)?;
                    let mut len = segment.read_into(offset, chunk_bytes, &mut chunk)?;
                    let record = chunk.get(..len).and_then(record_len).unwrap_or(0);
                    if record > len {
                        len = segment.read_into(offset, record, &mut chunk)?;
                    }
                    held = Some((segment, offset, len));
                }
                let Some((segment, start, len)) = &held else {
                    continue;
                };
                let held = chunk.get(..*len).unwrap_or_default();
                let event = decode_record(held, (offset - start) as usize, position)
                    .map_err(|reason| segment.corrupted(offset, reason))?;
                events.push(event);
            }
            Ok(events)
        })
    }

    /// The id of the record at a location, checksum checked.
    pub fn read_id(&self, location: u64) -> Result<uuid::Uuid, StoreError> {
        let (number, offset) = unpack(location);
        let segment = self.get(number)?;
        let mut bytes = segment.read(offset, SCATTERED_CHUNK_BYTES)?;
        let len = record_len(&bytes).unwrap_or(0);
        if len > bytes.len() {
            bytes = segment.read(offset, len)?;
        }
        record_id(&bytes).map_err(|reason| segment.corrupted(offset, reason))
    }
}

/// The segment being appended to.
pub struct SegmentWriter {
    pub number: u32,
    pub len: u64,
    file: File,
}

impl SegmentWriter {
    /// Opens an existing segment for appending at `len` (everything after it is cut off).
    pub fn open(path: &Path, number: u32, len: u64) -> Result<Self, StoreError> {
        let file = OpenOptions::new().write(true).open(path)?;
        if file.metadata()?.len() != len {
            file.set_len(len)?;
            file.sync_all()?;
        }
        Ok(SegmentWriter { number, len, file })
    }

    /// Creates a new, empty segment durably (file and directory entry).
    pub fn create(log_dir: &Path, number: u32, first_position: u64) -> Result<Self, StoreError> {
        let path = segment_path(log_dir, number);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(
            &SegmentHeader {
                segment: number,
                first_position,
            }
            .encode(),
        )?;
        file.sync_all()?;
        sync_dir(log_dir)?;
        Ok(SegmentWriter {
            number,
            len: SEGMENT_HEADER_BYTES as u64,
            file,
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(bytes, self.len)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes everything written durable (`fdatasync`).
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Writes `bytes` zeros past the end and syncs them, then cuts them off again (durably):
    /// whether the disk takes writes. The segment is as it was afterwards, whatever happened.
    pub fn probe(&mut self, bytes: usize) -> std::io::Result<()> {
        let tried = self
            .file
            .write_all_at(&vec![0u8; bytes], self.len)
            .and_then(|()| self.file.sync_data());
        let cut = self
            .file
            .set_len(self.len)
            .and_then(|()| self.file.sync_all());
        tried.and(cut)
    }
}

/// Makes a directory's entries durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A frame read from a segment.
pub struct Frame {
    pub offset: u64,
    pub header: FrameHeader,
    /// The frame's bytes, header included.
    pub bytes: Bytes,
}

impl Frame {
    /// Checks that the frame starts where the one before it ended.
    pub fn expect_first_position(
        &self,
        segment: &Segment,
        next_position: u64,
    ) -> Result<(), StoreError> {
        if self.header.first_position != next_position {
            return Err(segment.corrupted(
                self.offset,
                format!(
                    "frame starts at position {}, expected {next_position}",
                    self.header.first_position
                ),
            ));
        }
        Ok(())
    }

    /// Hands each record's fields (and its file offset) to `visit`. The frame's checksum was
    /// checked when it was read, and it covers every record byte.
    pub fn visit_records(
        &self,
        segment: &Segment,
        mut visit: impl FnMut(u64, u64, format::RecordView<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.header.is_gap() {
            return Ok(());
        }
        let mut at = FRAME_HEADER_BYTES;
        for i in 0..self.header.count {
            let offset = self.offset + at as u64;
            let record = self
                .bytes
                .get(at..)
                .ok_or_else(|| segment.corrupted(offset, "frame ends before its records"))
                .and_then(|rest| {
                    debug_assert!(
                        record_id(rest).is_ok(),
                        "a record of a checked frame passes its own checksum"
                    );
                    format::view_record(rest).map_err(|reason| segment.corrupted(offset, reason))
                })?;
            at += record.len;
            visit(offset, self.header.first_position + u64::from(i), record)?;
        }
        if at != self.bytes.len() {
            return Err(segment.corrupted(self.offset, "frame has bytes after its last record"));
        }
        Ok(())
    }

    /// Offsets (in the file) and decoded records of the frame, checksums checked.
    pub fn records(&self, segment: &Segment) -> Result<Vec<(u64, RecordedEvent)>, StoreError> {
        if self.header.is_gap() {
            return Ok(Vec::new());
        }
        let mut records = Vec::with_capacity(self.header.count as usize);
        let mut at = FRAME_HEADER_BYTES;
        for i in 0..self.header.count {
            let position = self.header.first_position + u64::from(i);
            let event = decode_record(&self.bytes, at, position)
                .map_err(|reason| segment.corrupted(self.offset + at as u64, reason))?;
            let len = self.bytes.get(at..).and_then(record_len).unwrap_or(0);
            records.push((self.offset + at as u64, event));
            at += len;
        }
        if at != self.bytes.len() {
            return Err(segment.corrupted(self.offset, "frame has bytes after its last record"));
        }
        Ok(records)
    }
}

/// Why a frame could not be read: at the end of the last segment, a torn tail to cut off;
/// anywhere else, corruption.
#[derive(Debug, thiserror::Error)]
pub enum FrameFault {
    /// The file ends with too few bytes for a frame header.
    #[error("{0} bytes at the end are too few for a frame")]
    TooShort(u64),
    /// The file ends inside the frame.
    #[error("frame of {0} bytes runs past the end of the file")]
    RunsPastEnd(usize),
    /// The frame is there but wrong.
    #[error(transparent)]
    Bad(#[from] DecodeError),
}

/// Reads frames one after another from a segment, in large chunks.
pub struct FrameReader<'a> {
    segment: &'a Segment,
    file_len: u64,
    pub offset: u64,
    chunk: Bytes,
    chunk_start: u64,
}

/// Bytes the frame reader fetches at once.
const FRAME_READER_CHUNK_BYTES: usize = 8 * 1024 * 1024;

impl<'a> FrameReader<'a> {
    pub fn new(segment: &'a Segment, file_len: u64, offset: u64) -> Self {
        FrameReader {
            segment,
            file_len,
            offset,
            chunk: Bytes::new(),
            chunk_start: offset,
        }
    }

    fn bytes(&mut self, offset: u64, len: usize) -> Result<Bytes, StoreError> {
        let end = offset + len as u64;
        if offset < self.chunk_start || end > self.chunk_start + self.chunk.len() as u64 {
            let want = len.max(FRAME_READER_CHUNK_BYTES);
            self.chunk = self.segment.read(offset, want)?;
            self.chunk_start = offset;
        }
        let from = (offset - self.chunk_start) as usize;
        Ok(self.chunk.slice(from..(from + len).min(self.chunk.len())))
    }

    /// The next frame of a segment whose frames must all be whole (a sealed one, or what
    /// verification reads): a frame that cannot be read is corruption. `None` at the end.
    pub fn next_whole(&mut self) -> Result<Option<Frame>, StoreError> {
        let at = self.offset;
        self.next()?
            .map_err(|reason| self.segment.corrupted(at, reason))
    }

    /// The next frame; `Ok(None)` at the end of the file.
    pub fn next(&mut self) -> Result<Result<Option<Frame>, FrameFault>, StoreError> {
        let offset = self.offset;
        if offset >= self.file_len {
            return Ok(Ok(None));
        }
        let remaining = self.file_len - offset;
        if remaining < FRAME_HEADER_BYTES as u64 {
            return Ok(Err(FrameFault::TooShort(remaining)));
        }
        let head = self.bytes(offset, FRAME_HEADER_BYTES)?;
        let header = match FrameHeader::decode(&head) {
            Ok(header) => header,
            Err(reason) => return Ok(Err(FrameFault::Bad(reason))),
        };
        if header.total_len() as u64 > remaining {
            return Ok(Err(FrameFault::RunsPastEnd(header.total_len())));
        }
        let bytes = self.bytes(offset, header.total_len())?;
        if let Err(bad) = header.check(&bytes) {
            return Ok(Err(FrameFault::Bad(bad)));
        }
        self.offset += header.total_len() as u64;
        Ok(Ok(Some(Frame {
            offset,
            header,
            bytes,
        })))
    }
}
