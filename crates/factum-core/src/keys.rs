//! Keys for personal data (SPEC R1.11): one key per subject (a customer, a person), kept apart
//! from the append-only log in a store that can truly delete. The toolkit encrypts the fields
//! an event marks as personal with its subject's key before the event is appended; deleting the
//! key ([`KeyStore::forget`]) makes those fields unreadable everywhere the event went — reads,
//! `$all`, exports, relays, read models rebuilt from it — while the rest of the event stays.
//!
//! Each backend offers its own ([`EventStore::keys`](crate::EventStore::keys)): the embedded
//! store a directory of files beside its log ([`FileKeyStore`]), PostgreSQL a table, the
//! in-memory store a map ([`MemoryKeyStore`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::StoreError;

/// A subject's key: 256 bits.
pub type SubjectKey = [u8; 32];

/// Longest subject id, in characters (Unicode scalar values).
pub const SUBJECT_CHARS_MAX: usize = 100;

/// Checks a subject id: 1 to [`SUBJECT_CHARS_MAX`] characters, none of them a control
/// character.
pub fn validate_subject(subject: &str) -> Result<(), StoreError> {
    if subject.is_empty()
        || subject.chars().count() > SUBJECT_CHARS_MAX
        || subject.chars().any(char::is_control)
    {
        return Err(StoreError::invalid(format!(
            "a subject id is 1 to {SUBJECT_CHARS_MAX} characters without control characters, got {subject:?}"
        )));
    }
    Ok(())
}

/// Where subjects' keys live.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The subject's key, if it has one (none when it never had one or was forgotten).
    async fn key(&self, subject: &str) -> Result<Option<SubjectKey>, StoreError>;
    /// Stores `key` as the subject's key if it has none yet, durably; returns the subject's key
    /// (the one given, or the one it had).
    async fn add_key(&self, subject: &str, key: SubjectKey) -> Result<SubjectKey, StoreError>;
    /// Deletes the subject's key for good; `false` when it had none (nothing changed).
    async fn forget(&self, subject: &str) -> Result<bool, StoreError>;
}

/// Opens events for code that reads them without a repository (a projector): their sealed
/// personal data decrypted with the store's keys, or marked forgotten. The toolkit's
/// `OpenPersonalData` is the one that knows how.
#[async_trait]
pub trait EventOpener: Send + Sync {
    /// Replaces the data of each of `events` that holds sealed personal data with it opened.
    async fn open(
        &self,
        store: &dyn crate::EventStore,
        events: &mut [crate::RecordedEvent],
    ) -> Result<(), StoreError>;
}

/// Keys in memory, for tests.
#[derive(Default)]
pub struct MemoryKeyStore {
    keys: Mutex<HashMap<String, SubjectKey>>,
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn key(&self, subject: &str) -> Result<Option<SubjectKey>, StoreError> {
        validate_subject(subject)?;
        Ok(self.keys.lock().get(subject).copied())
    }

    async fn add_key(&self, subject: &str, key: SubjectKey) -> Result<SubjectKey, StoreError> {
        validate_subject(subject)?;
        Ok(*self.keys.lock().entry(subject.to_owned()).or_insert(key))
    }

    async fn forget(&self, subject: &str) -> Result<bool, StoreError> {
        validate_subject(subject)?;
        Ok(self.keys.lock().remove(subject).is_some())
    }
}

/// Keys as files of a directory of their own, one per subject: its name a name-based UUID of
/// the subject (version 5), its content the subject (2 bytes of length, then its UTF-8), the
/// 32 bytes of the key, and the CRC32C of both. A key is written to a temporary
/// file, synced and renamed into place, and the directory synced, before it is used; forgetting
/// removes the file and syncs the directory. Only the process that holds the store's directory
/// uses it; a key read once is kept in memory.
pub struct FileKeyStore {
    dir: PathBuf,
    cache: Mutex<HashMap<String, SubjectKey>>,
}

impl FileKeyStore {
    /// The key store in `dir` (created when missing).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        Ok(FileKeyStore {
            dir,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The key store in `dir` as it is, for reading only: nothing is created (a store opened
    /// read-only); adding a key fails when `dir` does not exist.
    pub fn existing(dir: impl AsRef<Path>) -> Self {
        FileKeyStore {
            dir: dir.as_ref().to_path_buf(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The directory of the key files: back it up on its own schedule (see the guide).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, subject: &str) -> PathBuf {
        let name = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, subject.as_bytes());
        self.dir.join(format!("{name}.key"))
    }

    fn contents(subject: &str, key: &SubjectKey) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(2 + subject.len() + 32 + 4);
        bytes.extend_from_slice(&(subject.len() as u16).to_le_bytes());
        bytes.extend_from_slice(subject.as_bytes());
        bytes.extend_from_slice(key);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn read(&self, subject: &str) -> Result<Option<SubjectKey>, StoreError> {
        let path = self.path(subject);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let damaged = |reason: &str| StoreError::Corrupted {
            file: path.clone(),
            offset: 0,
            reason: reason.into(),
        };
        let (body, crc) = bytes
            .split_at_checked(bytes.len().saturating_sub(4))
            .ok_or_else(|| damaged("a key file too short"))?;
        let crc: [u8; 4] = crc
            .try_into()
            .map_err(|_| damaged("a key file too short"))?;
        if crc32c::crc32c(body) != u32::from_le_bytes(crc) {
            return Err(damaged("a key file whose checksum does not match"));
        }
        let stored_len = body
            .get(..2)
            .and_then(|b| <[u8; 2]>::try_from(b).ok())
            .map(|b| u16::from_le_bytes(b) as usize)
            .ok_or_else(|| damaged("a key file too short"))?;
        let stored = body
            .get(2..2 + stored_len)
            .ok_or_else(|| damaged("a key file too short"))?;
        if stored != subject.as_bytes() {
            return Err(damaged(
                "the key file of another subject has this one's name",
            ));
        }
        let key: SubjectKey = body
            .get(2 + stored_len..)
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| damaged("a key file whose key is not 32 bytes"))?;
        Ok(Some(key))
    }
}

#[async_trait]
impl KeyStore for FileKeyStore {
    async fn key(&self, subject: &str) -> Result<Option<SubjectKey>, StoreError> {
        validate_subject(subject)?;
        if let Some(key) = self.cache.lock().get(subject) {
            return Ok(Some(*key));
        }
        let key = self.read(subject)?;
        if let Some(key) = key {
            self.cache.lock().insert(subject.to_owned(), key);
        }
        Ok(key)
    }

    async fn add_key(&self, subject: &str, key: SubjectKey) -> Result<SubjectKey, StoreError> {
        validate_subject(subject)?;
        let mut cache = self.cache.lock();
        if let Some(existing) = cache.get(subject) {
            return Ok(*existing);
        }
        if let Some(existing) = self.read(subject)? {
            cache.insert(subject.to_owned(), existing);
            return Ok(existing);
        }
        let path = self.path(subject);
        let tmp = path.with_extension("key.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&Self::contents(subject, &key))?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        cache.insert(subject.to_owned(), key);
        Ok(key)
    }

    async fn forget(&self, subject: &str) -> Result<bool, StoreError> {
        validate_subject(subject)?;
        let mut cache = self.cache.lock();
        cache.remove(subject);
        match std::fs::remove_file(self.path(subject)) {
            Ok(()) => {
                std::fs::File::open(&self.dir)?.sync_all()?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_file_key_is_kept_until_forgotten_and_then_gone_from_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let keys = FileKeyStore::open(dir.path().join("keys")).unwrap();
        assert_eq!(keys.key("cus-1").await.unwrap(), None);
        let key = keys.add_key("cus-1", [7; 32]).await.unwrap();
        assert_eq!(key, [7; 32]);
        assert_eq!(keys.add_key("cus-1", [8; 32]).await.unwrap(), [7; 32]);
        let reopened = FileKeyStore::open(dir.path().join("keys")).unwrap();
        assert_eq!(reopened.key("cus-1").await.unwrap(), Some([7; 32]));
        assert!(reopened.forget("cus-1").await.unwrap());
        assert!(!reopened.forget("cus-1").await.unwrap());
        assert_eq!(reopened.key("cus-1").await.unwrap(), None);
        assert_eq!(
            std::fs::read_dir(dir.path().join("keys")).unwrap().count(),
            0
        );
        assert!(keys.add_key("", [1; 32]).await.is_err());
        assert!(keys.add_key(&"x".repeat(101), [1; 32]).await.is_err());
        assert!(keys.add_key("a\tb", [1; 32]).await.is_err());
        // The longest subject, in characters of four bytes each.
        let long = "\u{10348}".repeat(100);
        assert_eq!(keys.add_key(&long, [3; 32]).await.unwrap(), [3; 32]);
        assert_eq!(
            FileKeyStore::open(dir.path().join("keys"))
                .unwrap()
                .key(&long)
                .await
                .unwrap(),
            Some([3; 32])
        );
    }
}
