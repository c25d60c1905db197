//! Personal data in domain events, and forgetting it (crypto-shredding, SPEC R1.11).
//!
//! A field of a domain event that holds personal data is a [`Personal<T>`], tied to a subject
//! (a customer id, say). Before the event is appended, the repository encrypts the field's value
//! with the subject's key from the store's [`KeyStore`] (ChaCha20-Poly1305, a fresh nonce per
//! field, the subject as associated data), so the log, `$all`, exports and relayed messages hold
//! only ciphertext. Loading decrypts it again; once the subject is forgotten
//! ([`forget_subject`], `factum forget`), its key is gone and the field decodes as
//! [`Personal::Forgotten`] — a value the domain handles, never an error — while the rest of the
//! event (its type, ids, amounts, times) stays as it was.
//!
//! On the wire a field is `{"$personal": {"subject": "cus-7", "sealed": "<base64>"}}`; in
//! memory, before sealing and after opening, `{"$personal": {"subject": …, "value": …}}` or
//! `{"$personal": {"subject": …, "forgotten": true}}`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use factum_core::{EventStore, KeyStore, RecordedEvent, StoreError, SubjectKey};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The key that marks a personal field in an event's JSON.
pub const PERSONAL_KEY: &str = "$personal";

/// A field holding personal data of `subject`: known, or forgotten for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Personal<T> {
    /// The value, readable while the subject's key exists.
    Known {
        /// Whose data it is.
        subject: String,
        /// The data.
        value: T,
    },
    /// The subject was forgotten: its key is deleted and the value can never be read again.
    Forgotten {
        /// Whose data it was.
        subject: String,
    },
}

impl<T> Personal<T> {
    /// `value`, personal data of `subject`.
    pub fn new(subject: impl Into<String>, value: T) -> Self {
        Personal::Known {
            subject: subject.into(),
            value,
        }
    }

    /// Whose data it is.
    pub fn subject(&self) -> &str {
        match self {
            Personal::Known { subject, .. } | Personal::Forgotten { subject } => subject,
        }
    }

    /// The value, unless it was forgotten.
    pub fn value(&self) -> Option<&T> {
        match self {
            Personal::Known { value, .. } => Some(value),
            Personal::Forgotten { .. } => None,
        }
    }

    /// Whether the subject was forgotten.
    pub fn is_forgotten(&self) -> bool {
        matches!(self, Personal::Forgotten { .. })
    }
}

#[derive(Serialize, Deserialize)]
struct Wire<T> {
    subject: String,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    value: Option<T>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    forgotten: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

fn none<T>() -> Option<T> {
    None
}

#[derive(Serialize, Deserialize)]
struct Marked<T> {
    #[serde(rename = "$personal")]
    personal: Wire<T>,
}

impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let personal = match self {
            Personal::Known { subject, value } => Wire {
                subject: subject.clone(),
                value: Some(value),
                forgotten: false,
                sealed: None,
            },
            Personal::Forgotten { subject } => Wire {
                subject: subject.clone(),
                value: None,
                forgotten: true,
                sealed: None,
            },
        };
        Marked { personal }.serialize(serializer)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Marked::<T> { personal } = Marked::deserialize(deserializer)?;
        match (personal.value, personal.forgotten, personal.sealed) {
            (Some(value), false, None) => Ok(Personal::Known {
                subject: personal.subject,
                value,
            }),
            (None, true, None) => Ok(Personal::Forgotten {
                subject: personal.subject,
            }),
            (None, false, Some(_)) => Err(serde::de::Error::custom(
                "personal data still sealed: decode the event through the repository, which opens it with the store's keys",
            )),
            _ => Err(serde::de::Error::custom(
                "personal data needs exactly one of value, forgotten or sealed",
            )),
        }
    }
}

/// Why personal data could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum PersonalError {
    /// An event with personal data, and a store without keys.
    #[error("an event holds personal data, but the store has no key store")]
    NoKeyStore,
    /// A `$personal` field that is not what the toolkit writes.
    #[error("a personal field that is not {{subject, value | sealed | forgotten}}: {0}")]
    Malformed(String),
    /// Sealed data that does not open with its subject's key: damaged, or not this store's.
    #[error("the personal data of '{0}' does not open with its key (damaged?)")]
    Damaged(String),
    /// The key store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The subjects of the personal fields in `value` (sealed ones when `sealed`, else plain).
fn subjects(value: &Value, sealed: bool, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(inner)) = map.get(PERSONAL_KEY)
                && map.len() == 1
            {
                let field = if sealed { "sealed" } else { "value" };
                if let (Some(Value::String(subject)), true) =
                    (inner.get("subject"), inner.contains_key(field))
                {
                    out.insert(subject.clone());
                }
                return;
            }
            map.values().for_each(|v| subjects(v, sealed, out));
        }
        Value::Array(items) => items.iter().for_each(|v| subjects(v, sealed, out)),
        _ => {}
    }
}

/// What [`each_personal`] does to a personal field's inner object.
type FieldChange<'a> = dyn FnMut(&mut Map<String, Value>) -> Result<(), PersonalError> + 'a;

/// Applies `change` to every personal field of `value` (its inner object).
fn each_personal(value: &mut Value, change: &mut FieldChange<'_>) -> Result<(), PersonalError> {
    match value {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(Value::Object(inner)) = map.get_mut(PERSONAL_KEY)
            {
                return change(inner);
            }
            for v in map.values_mut() {
                each_personal(v, change)?;
            }
        }
        Value::Array(items) => {
            for v in items {
                each_personal(v, change)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn aead_key(key: &SubjectKey) -> Result<LessSafeKey, PersonalError> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| PersonalError::Malformed("a key of the wrong length".into()))
}

/// The plaintext (JSON bytes) of `sealed` (base64 of nonce, ciphertext and tag).
fn unseal(aead: &LessSafeKey, subject: &str, sealed: &str) -> Result<Vec<u8>, PersonalError> {
    let damaged = || PersonalError::Damaged(subject.to_owned());
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|_| damaged())?;
    if bytes.len() < NONCE_LEN {
        return Err(damaged());
    }
    let mut ciphertext = bytes.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| damaged())?;
    let len = aead
        .open_in_place(nonce, Aad::from(subject.as_bytes()), &mut ciphertext)
        .map_err(|_| damaged())?
        .len();
    ciphertext.truncate(len);
    Ok(ciphertext)
}

/// A personal field found in compact JSON: where it starts and ends (the whole
/// `{"$personal":{…}}` object), and its subject and sealed data when it is sealed.
struct CompactField<'a> {
    start: usize,
    end: usize,
    subject: std::borrow::Cow<'a, str>,
    sealed: Option<std::borrow::Cow<'a, str>>,
    /// It holds its value in the clear (or is marked forgotten): nothing to open.
    plain: bool,
}

#[derive(Deserialize)]
struct SealedWire<'a> {
    #[serde(borrow)]
    subject: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    sealed: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    value: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    forgotten: bool,
}

/// The personal fields of compact JSON `data`, in order; `None` when some `"$personal"` in it
/// is not at the start of a compact `{"$personal":{…}}` (then only a JSON tree reads it
/// right). In compact JSON the quotes of a key are bare, and inside a string they would be
/// escaped, so the byte pattern finds exactly the fields.
fn compact_fields(data: &[u8]) -> Option<Vec<Result<CompactField<'_>, PersonalError>>> {
    const OPEN: &[u8] = b"{\"$personal\":";
    let mut fields = Vec::new();
    let mut mentions = 0;
    let mut at = 0;
    while let Some(found) = data.get(at..).and_then(|rest| PERSONAL_FINDER.find(rest)) {
        let key_at = at + found;
        mentions += 1;
        at = key_at + PERSONAL_FINDER.needle().len();
        let Some(start) = key_at
            .checked_sub(1)
            .filter(|s| data.get(*s) == Some(&b'{'))
        else {
            continue;
        };
        let inner_at = start + OPEN.len();
        let mut reader =
            serde_json::Deserializer::from_slice(data.get(inner_at..)?).into_iter::<SealedWire>();
        let field = match reader.next()? {
            Ok(wire) => {
                let end = inner_at + reader.byte_offset();
                if data.get(end) != Some(&b'}') {
                    return None;
                }
                at = end + 1;
                Ok(CompactField {
                    start,
                    end: end + 1,
                    plain: wire.value.is_some() || wire.forgotten,
                    subject: wire.subject,
                    sealed: wire.sealed,
                })
            }
            Err(e) => Err(PersonalError::Malformed(e.to_string())),
        };
        fields.push(field);
    }
    (fields.len() == mentions).then_some(fields)
}

fn subject_of(inner: &Map<String, Value>) -> Result<String, PersonalError> {
    match inner.get("subject") {
        Some(Value::String(subject)) => Ok(subject.clone()),
        _ => Err(PersonalError::Malformed(
            Value::Object(inner.clone()).to_string(),
        )),
    }
}

/// The keys of the subjects met, fetched once each.
#[derive(Default)]
pub(crate) struct Keys {
    /// Each subject's key, ready for ChaCha20-Poly1305; `None` when it has none.
    known: HashMap<String, Option<LessSafeKey>>,
}

impl Keys {
    /// Makes sure every subject with plain personal data in `value` has a key (a new random one
    /// when it has none), then encrypts that data in place.
    pub(crate) async fn seal(
        &mut self,
        store: Option<&Arc<dyn KeyStore>>,
        value: &mut Value,
    ) -> Result<(), PersonalError> {
        let mut found = BTreeSet::new();
        subjects(value, false, &mut found);
        if found.is_empty() {
            return Ok(());
        }
        let store = store.ok_or(PersonalError::NoKeyStore)?;
        let random = SystemRandom::new();
        for subject in found {
            if matches!(self.known.get(&subject), Some(Some(_))) {
                continue;
            }
            let mut key = [0u8; 32];
            random
                .fill(&mut key)
                .map_err(|_| StoreError::invalid("no randomness for a new key"))?;
            let key = store.add_key(&subject, key).await?;
            self.known.insert(subject, Some(aead_key(&key)?));
        }
        each_personal(value, &mut |inner| {
            let subject = subject_of(inner)?;
            let Some(plain) = inner.remove("value") else {
                return Ok(());
            };
            let Some(Some(aead)) = self.known.get(&subject) else {
                return Err(PersonalError::NoKeyStore);
            };
            let mut nonce = [0u8; NONCE_LEN];
            random
                .fill(&mut nonce)
                .map_err(|_| StoreError::invalid("no randomness for a nonce"))?;
            let mut bytes =
                serde_json::to_vec(&plain).map_err(|e| PersonalError::Malformed(e.to_string()))?;
            aead.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(subject.as_bytes()),
                &mut bytes,
            )
            .map_err(|_| PersonalError::Damaged(subject.clone()))?;
            let mut sealed = nonce.to_vec();
            sealed.extend_from_slice(&bytes);
            inner.insert(
                "sealed".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(sealed)),
            );
            Ok(())
        })
    }

    /// Fetches the keys of the subjects whose sealed data `value` holds (those not fetched yet).
    async fn fetch(
        &mut self,
        store: Option<&Arc<dyn KeyStore>>,
        value: &Value,
    ) -> Result<(), PersonalError> {
        let mut found = BTreeSet::new();
        subjects(value, true, &mut found);
        found.retain(|s| !self.known.contains_key(s));
        if found.is_empty() {
            return Ok(());
        }
        let store = store.ok_or(PersonalError::NoKeyStore)?;
        for subject in found {
            let key = store
                .key(&subject)
                .await?
                .as_ref()
                .map(aead_key)
                .transpose()?;
            self.known.insert(subject, key);
        }
        Ok(())
    }

    /// JSON `data` with each sealed personal field opened: decrypted with its subject's key
    /// (fetched the first time the subject is met), or marked forgotten. `None` when it holds
    /// no personal data.
    pub(crate) async fn open_json(
        &mut self,
        store: Option<&Arc<dyn KeyStore>>,
        data: &[u8],
    ) -> Result<Option<Vec<u8>>, PersonalError> {
        if !mentions_personal(data) {
            return Ok(None);
        }
        if let Some(opened) = self.open_compact(store, data).await? {
            return Ok(Some(opened));
        }
        let mut value: Value =
            serde_json::from_slice(data).map_err(|e| PersonalError::Malformed(e.to_string()))?;
        self.fetch(store, &value).await?;
        self.open(&mut value)?;
        serde_json::to_vec(&value)
            .map(Some)
            .map_err(|e| PersonalError::Malformed(e.to_string()))
    }

    /// `data` (compact JSON, as the toolkit stores it) with each sealed personal field opened,
    /// written byte for byte around them — without building a JSON tree, which costs more
    /// than the decryption. `None` when `data` is not compact where a field is (written by
    /// other means): [`Keys::open`] reads it then.
    async fn open_compact(
        &mut self,
        store: Option<&Arc<dyn KeyStore>>,
        data: &[u8],
    ) -> Result<Option<Vec<u8>>, PersonalError> {
        let Some(fields) = compact_fields(data) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(data.len());
        let mut copied = 0;
        for field in fields {
            let field = field?;
            let (Some(sealed), false) = (field.sealed, field.plain) else {
                continue;
            };
            let subject = field.subject;
            if !self.known.contains_key(subject.as_ref()) {
                let store = store.ok_or(PersonalError::NoKeyStore)?;
                let key = store
                    .key(&subject)
                    .await?
                    .as_ref()
                    .map(aead_key)
                    .transpose()?;
                self.known.insert(subject.clone().into_owned(), key);
            }
            out.extend_from_slice(data.get(copied..field.start).unwrap_or_default());
            out.extend_from_slice(b"{\"$personal\":{\"subject\":");
            serde_json::to_writer(&mut out, subject.as_ref())
                .map_err(|e| PersonalError::Malformed(e.to_string()))?;
            match self.known.get(subject.as_ref()).and_then(Option::as_ref) {
                Some(aead) => {
                    out.extend_from_slice(b",\"value\":");
                    out.extend_from_slice(&unseal(aead, &subject, &sealed)?);
                }
                None => out.extend_from_slice(b",\"forgotten\":true"),
            }
            out.extend_from_slice(b"}}");
            copied = field.end;
        }
        out.extend_from_slice(data.get(copied..).unwrap_or_default());
        Ok(Some(out))
    }

    /// Decrypts the sealed data in `value` with the keys fetched; data whose subject has no
    /// key any more becomes `forgotten`.
    fn open(&self, value: &mut Value) -> Result<(), PersonalError> {
        each_personal(value, &mut |inner| {
            let subject = subject_of(inner)?;
            let Some(Value::String(sealed)) = inner.remove("sealed") else {
                return Ok(());
            };
            let Some(aead) = self.known.get(&subject).and_then(Option::as_ref) else {
                inner.insert("forgotten".into(), Value::Bool(true));
                return Ok(());
            };
            let plain = unseal(aead, &subject, &sealed)?;
            let value: Value = serde_json::from_slice(&plain)
                .map_err(|_| PersonalError::Damaged(subject.clone()))?;
            inner.insert("value".into(), value);
            Ok(())
        })
    }
}

/// Refuses `value` if it holds plain personal data: it must be sealed before it is stored.
pub(crate) fn refuse_plain(value: &mut Value) -> Result<(), PersonalError> {
    let mut found = BTreeSet::new();
    subjects(value, false, &mut found);
    if found.is_empty() {
        Ok(())
    } else {
        Err(PersonalError::NoKeyStore)
    }
}

/// Finds `"$personal"` in bytes.
static PERSONAL_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"$personal\""));

fn mentions_personal(bytes: &[u8]) -> bool {
    PERSONAL_FINDER.find(bytes).is_some()
}

/// JSON `bytes` (a snapshot's state) with their plain personal data sealed with `store`'s
/// keys; unchanged when they hold none.
pub(crate) async fn seal_bytes(
    store: &dyn EventStore,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, PersonalError> {
    if !mentions_personal(&bytes) {
        return Ok(bytes);
    }
    let mut value: Value =
        serde_json::from_slice(&bytes).map_err(|e| PersonalError::Malformed(e.to_string()))?;
    Keys::default()
        .seal(store.keys().as_ref(), &mut value)
        .await?;
    serde_json::to_vec(&value).map_err(|e| PersonalError::Malformed(e.to_string()))
}

/// JSON `bytes` (a snapshot's state) with their sealed personal data opened; `None` when they
/// hold none.
pub(crate) async fn open_bytes(
    store: &dyn EventStore,
    bytes: &[u8],
) -> Result<Option<Vec<u8>>, PersonalError> {
    Keys::default()
        .open_json(store.keys().as_ref(), bytes)
        .await
}

/// Reads `recorded`'s data with its personal fields opened: decrypted with their subjects'
/// keys from `store`, or marked forgotten. For read models and handlers that read events
/// without a repository. `None` when the event holds no personal data.
pub async fn open_personal(
    store: &dyn EventStore,
    recorded: &RecordedEvent,
) -> Result<Option<Value>, PersonalError> {
    match open_bytes(store, &recorded.data).await? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PersonalError::Malformed(e.to_string())),
        None => Ok(None),
    }
}

/// Opens the personal data of events read without a repository (see
/// [`factum_core::EventOpener`]): give it to a projector (`Projector::open_events`) whose
/// projection reads [`Personal`] fields, and a read model rebuilt after a subject was
/// forgotten holds `forgotten` where its data was.
pub struct OpenPersonalData;

#[async_trait::async_trait]
impl factum_core::EventOpener for OpenPersonalData {
    async fn open(
        &self,
        store: &dyn EventStore,
        events: &mut [RecordedEvent],
    ) -> Result<(), StoreError> {
        let invalid = |e: PersonalError| match e {
            PersonalError::Store(e) => e,
            other => StoreError::invalid(other.to_string()),
        };
        let store_keys = store.keys();
        let mut keys = Keys::default();
        for event in events.iter_mut() {
            if let Some(opened) = keys
                .open_json(store_keys.as_ref(), &event.data)
                .await
                .map_err(invalid)?
            {
                event.data = bytes::Bytes::from(opened);
            }
        }
        Ok(())
    }
}

/// Forgets `subject` in `store`: deletes its key, so every personal field of it reads as
/// forgotten from now on, everywhere. An unknown subject (or one forgotten before) is
/// [`StoreError::UnknownSubject`] and changes nothing.
pub async fn forget_subject(store: &dyn EventStore, subject: &str) -> Result<(), StoreError> {
    let keys = store
        .keys()
        .ok_or_else(|| StoreError::Unsupported("personal data".into()))?;
    if keys.forget(subject).await? {
        Ok(())
    } else {
        Err(StoreError::UnknownSubject(subject.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Registered {
        customer: String,
        email: Personal<String>,
        amount: u64,
    }

    #[tokio::test]
    async fn sealed_fields_open_with_their_key_and_read_as_forgotten_without_it() {
        let store: Arc<dyn KeyStore> = Arc::new(factum_core::MemoryKeyStore::default());
        let event = Registered {
            customer: "cus-1".into(),
            email: Personal::new("cus-1", "ann@example.com".into()),
            amount: 42,
        };
        let mut value = serde_json::to_value(&event).unwrap();
        let mut keys = Keys::default();
        keys.seal(Some(&store), &mut value).await.unwrap();
        let text = value.to_string();
        assert!(!text.contains("ann@example.com"), "{text}");
        assert!(
            text.contains("\"amount\":42") && text.contains("cus-1"),
            "{text}"
        );
        assert!(serde_json::from_value::<Registered>(value.clone()).is_err());

        let mut reader = Keys::default();
        reader.fetch(Some(&store), &value).await.unwrap();
        let mut opened = value.clone();
        reader.open(&mut opened).unwrap();
        assert_eq!(
            serde_json::from_value::<Registered>(opened.clone()).unwrap(),
            event
        );
        // Opened in place in the stored bytes: the same, and every other byte as it was.
        let stored = serde_json::to_vec(&value).unwrap();
        let mut bytes_reader = Keys::default();
        let in_place = bytes_reader
            .open_compact(Some(&store), &stored)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&in_place).unwrap(), opened);
        // JSON that is not compact is left to the tree.
        let spaced = serde_json::to_vec_pretty(&value).unwrap();
        assert!(
            bytes_reader
                .open_compact(Some(&store), &spaced)
                .await
                .unwrap()
                .is_none()
        );
        // A string that mentions the key is no field.
        let mention = br#"{"note":"{\"$personal\":1}"}"#;
        assert_eq!(
            bytes_reader
                .open_compact(Some(&store), mention)
                .await
                .unwrap()
                .unwrap(),
            mention
        );

        assert!(store.forget("cus-1").await.unwrap());
        let mut reader = Keys::default();
        reader.fetch(Some(&store), &value).await.unwrap();
        reader.open(&mut value).unwrap();
        let forgotten: Registered = serde_json::from_value(value).unwrap();
        assert!(forgotten.email.is_forgotten());
        assert_eq!(forgotten.email.subject(), "cus-1");
        assert_eq!(forgotten.amount, 42);

        // Without a key store an event with personal data is refused.
        let mut plain = serde_json::to_value(&event).unwrap();
        assert!(matches!(
            Keys::default().seal(None, &mut plain).await,
            Err(PersonalError::NoKeyStore)
        ));
    }
}
