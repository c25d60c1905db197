//! The derived index: the stream catalog (stream → positions, deletes, metadata, checkpoints),
//! position → record location, and the tag index of DCB queries (tag → positions, type →
//! positions). It lives in memory, is saved to `index.fidx` with the log
//! position it covers ("indexed up to"), and is brought up to date from the log tail on open.
//! The log is the truth: a missing or damaged index file is rebuilt from the log.

use std::io::{BufWriter, Write};
use std::path::Path;

use factum_core::StreamName;
use factum_core::backend::catalog::{Catalog, StreamState};
use factum_core::backend::tag_index::TagIndex;
use uuid::Uuid;

const INDEX_MAGIC: &[u8; 8] = b"FACTUMIX";
/// Version 2 added the tag index; a version 1 file is rebuilt from the log once.
const INDEX_VERSION: u32 = 2;
/// The index file's name inside the data directory.
pub const INDEX_FILE: &str = "index.fidx";

/// Why a saved index cannot be used. It is never needed: the caller rebuilds the index from
/// the log, and the reason is logged.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Reading or writing the file failed.
    #[error("index file: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not an index (another file, or its first bytes are damaged).
    #[error("not a Factum index (bad magic)")]
    Magic,
    /// An index of a format version this build does not read.
    #[error("index format version {0} is not supported")]
    Version(u32),
    /// The file ends before what it says it holds.
    #[error("the index file is cut short")]
    CutShort,
    /// A count larger than the rest of the file could hold.
    #[error("a count in the index is larger than the file")]
    CountOverFile,
    /// A stream name or consumer that does not decode.
    #[error("a name in the index does not decode")]
    BadName,
    /// The tag index does not decode, or does not cover what the rest covers.
    #[error("the tag index does not decode")]
    BadTags,
    /// Stream metadata that does not decode.
    #[error("stream metadata in the index does not decode: {0}")]
    BadMetadata(String),
    /// The checksum does not match the file's bytes, or bytes follow the checksum.
    #[error("index checksum mismatch")]
    Checksum,
}

impl From<IndexError> for factum_core::StoreError {
    fn from(error: IndexError) -> Self {
        match error {
            IndexError::Io(e) => factum_core::StoreError::Io(e),
            other => factum_core::StoreError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

/// Everything derived from the log.
#[derive(Default)]
pub struct Index {
    pub catalog: Catalog,
    /// `locations[p]` is where the record of position `p` starts (see [`crate::log::pack`]).
    pub locations: Vec<u64>,
    /// Positions by tag and by type, for DCB reads and conditions.
    pub tags: TagIndex,
}

/// Where the log ended when the index was saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexedUpTo {
    pub next_position: u64,
    pub segment: u32,
    pub offset: u64,
}

struct CrcWriter<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, buf.get(..n).unwrap_or_default());
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Index {
    /// Saves the index durably: written to a temporary file, synced, renamed over the old one.
    pub fn save(&self, dir: &Path, up_to: IndexedUpTo) -> Result<(), IndexError> {
        debug_assert_eq!(up_to.next_position, self.locations.len() as u64);
        let tmp = dir.join(format!("{INDEX_FILE}.tmp"));
        let file = std::fs::File::create(&tmp)?;
        let mut w = CrcWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: 0,
        };
        w.write_all(INDEX_MAGIC)?;
        w.write_all(&INDEX_VERSION.to_le_bytes())?;
        w.write_all(&up_to.segment.to_le_bytes())?;
        w.write_all(&up_to.offset.to_le_bytes())?;
        w.write_all(&up_to.next_position.to_le_bytes())?;
        for location in &self.locations {
            w.write_all(&location.to_le_bytes())?;
        }
        w.write_all(&(self.catalog.stream_count() as u64).to_le_bytes())?;
        for (name, state) in self.catalog.streams() {
            w.write_all(&(name.as_str().len() as u16).to_le_bytes())?;
            w.write_all(name.as_str().as_bytes())?;
            w.write_all(&state.deleted_before.to_le_bytes())?;
            w.write_all(&[u8::from(state.tombstoned)])?;
            w.write_all(state.last_id.unwrap_or(Uuid::nil()).as_bytes())?;
            let metadata = match &state.metadata {
                Some(metadata) => serde_json::to_vec(metadata).map_err(std::io::Error::other)?,
                None => Vec::new(),
            };
            w.write_all(&(metadata.len() as u32).to_le_bytes())?;
            w.write_all(&metadata)?;
            w.write_all(&(state.positions.len() as u64).to_le_bytes())?;
            for position in &state.positions {
                w.write_all(&position.to_le_bytes())?;
            }
        }
        let checkpoints: Vec<_> = self.catalog.checkpoints().collect();
        w.write_all(&(checkpoints.len() as u64).to_le_bytes())?;
        for (consumer, position) in checkpoints {
            w.write_all(&(consumer.len() as u16).to_le_bytes())?;
            w.write_all(consumer.as_bytes())?;
            w.write_all(&position.to_le_bytes())?;
        }
        let mut tags = Vec::new();
        self.tags.encode(&mut tags);
        w.write_all(&(tags.len() as u64).to_le_bytes())?;
        w.write_all(&tags)?;
        let crc = w.crc;
        let mut inner = w.inner;
        inner.write_all(&crc.to_le_bytes())?;
        let file = inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(INDEX_FILE))?;
        Ok(crate::log::sync_dir(dir)?)
    }

    /// Loads a saved index. `Ok(None)` when there is none or it is unusable (damaged, another
    /// version): the caller rebuilds from the log, which is always possible. The file is read as
    /// a stream, so loading needs no more memory than the index itself.
    pub fn load(dir: &Path) -> std::io::Result<Option<(Index, IndexedUpTo)>> {
        let path = dir.join(INDEX_FILE);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let mut r = Reader {
            inner: std::io::BufReader::with_capacity(1 << 20, file),
            crc: 0,
            left: len.saturating_sub(4),
        };
        let parsed = Self::parse(&mut r).and_then(|loaded| {
            let mut trailer = [0u8; 4];
            let intact = r.left == 0
                && std::io::Read::read_exact(&mut r.inner, &mut trailer).is_ok()
                && u32::from_le_bytes(trailer) == r.crc;
            if intact {
                Ok(loaded)
            } else {
                Err(IndexError::Checksum)
            }
        });
        match parsed {
            Ok(loaded) => Ok(Some(loaded)),
            Err(reason) => {
                tracing::warn!(file = %path.display(), %reason, "the saved index is unusable; rebuilding it from the log");
                Ok(None)
            }
        }
    }

    fn parse(r: &mut Reader) -> Result<(Index, IndexedUpTo), IndexError> {
        if r.take(8)? != INDEX_MAGIC {
            return Err(IndexError::Magic);
        }
        let version = r.u32()?;
        if version != INDEX_VERSION {
            return Err(IndexError::Version(version));
        }
        let segment = r.u32()?;
        let offset = r.u64()?;
        let next_position = r.u64()?;
        // Every count is checked against the bytes left, so a damaged count cannot make the
        // loader allocate more than the file could hold.
        let count = r.count(next_position, 8)?;
        let mut locations = Vec::with_capacity(count);
        r.u64s(count, &mut locations)?;
        let streams = r.u64()?;
        // Each stream takes at least 47 bytes of the file: this bounds the reservation.
        let mut catalog = Catalog::with_capacity(streams.min(r.left / 47) as usize);
        for _ in 0..streams {
            let name_len = r.u16()? as usize;
            let name = String::from_utf8(r.take(name_len)?).map_err(|_| IndexError::BadName)?;
            let name = StreamName::new(name).map_err(|_| IndexError::BadName)?;
            let deleted_before = r.u64()?;
            let [tombstoned] = r.fill::<1>()?;
            let id = Uuid::from_bytes(r.fill::<16>()?);
            let metadata_len = r.u32()? as usize;
            let metadata = match metadata_len {
                0 => None,
                n => Some(Box::new(
                    serde_json::from_slice(&r.take(n)?)
                        .map_err(|e| IndexError::BadMetadata(e.to_string()))?,
                )),
            };
            let count = r.u64()?;
            let count = r.count(count, 8)?;
            let mut positions = Vec::with_capacity(count);
            r.u64s(count, &mut positions)?;
            let state = StreamState {
                last_id: (!positions.is_empty()).then_some(id),
                positions,
                deleted_before,
                tombstoned: tombstoned != 0,
                metadata,
            };
            catalog.restore_stream(name, state);
        }
        for _ in 0..r.u64()? {
            let len = r.u16()? as usize;
            let consumer = String::from_utf8(r.take(len)?).map_err(|_| IndexError::BadName)?;
            catalog.restore_checkpoint(consumer, r.u64()?);
        }
        let len = r.u64()?;
        let len = r.count(len, 1)?;
        let bytes = r.take(len)?;
        let tags = match TagIndex::decode(&bytes) {
            Some((tags, used)) if used == len && tags.next_position() == next_position => tags,
            _ => return Err(IndexError::BadTags),
        };
        Ok((
            Index {
                catalog,
                locations,
                tags,
            },
            IndexedUpTo {
                next_position,
                segment,
                offset,
            },
        ))
    }
}

/// Reads the index file's body, keeping its checksum and how many body bytes are left.
struct Reader {
    inner: std::io::BufReader<std::fs::File>,
    crc: u32,
    left: u64,
}

impl Reader {
    fn fill<const N: usize>(&mut self) -> Result<[u8; N], IndexError> {
        let mut buf = [0u8; N];
        self.read(&mut buf)?;
        Ok(buf)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<(), IndexError> {
        if (buf.len() as u64) > self.left {
            return Err(IndexError::CutShort);
        }
        std::io::Read::read_exact(&mut self.inner, buf).map_err(|_| IndexError::CutShort)?;
        self.left -= buf.len() as u64;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }
    fn take(&mut self, n: usize) -> Result<Vec<u8>, IndexError> {
        if n as u64 > self.left {
            return Err(IndexError::CutShort);
        }
        let mut buf = vec![0u8; n];
        self.read(&mut buf)?;
        Ok(buf)
    }
    /// A count of items of `item_bytes` each, if the rest of the file can hold them.
    fn count(&self, count: u64, item_bytes: u64) -> Result<usize, IndexError> {
        match count.checked_mul(item_bytes) {
            Some(bytes) if bytes <= self.left => {
                usize::try_from(count).map_err(|_| IndexError::CountOverFile)
            }
            _ => Err(IndexError::CountOverFile),
        }
    }
    /// Reads `count` integers in large chunks.
    fn u64s(&mut self, count: usize, out: &mut Vec<u64>) -> Result<(), IndexError> {
        let mut chunk = [0u8; 8 * 1024];
        let mut left = count;
        while left > 0 {
            let n = left.min(1024);
            let bytes = chunk.get_mut(..n * 8).ok_or(IndexError::CutShort)?;
            self.read(bytes)?;
            out.extend(bytes.chunks_exact(8).map(|b| {
                let mut word = [0u8; 8];
                word.copy_from_slice(b);
                u64::from_le_bytes(word)
            }));
            left -= n;
        }
        Ok(())
    }
    fn u16(&mut self) -> Result<u16, IndexError> {
        self.fill::<2>().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, IndexError> {
        self.fill::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, IndexError> {
        self.fill::<8>().map(u64::from_le_bytes)
    }
}
