//! Personal data in domain events, and forgetting it (crypto-shredding, SPEC R1.11).
//!
//! A field of a domain event that holds personal data is a [`Personal<T>`], tied to a subject
//! (a customer id, say). Before the event is appended, the repository encrypts the field's value
//! with the subject's key from the store's [`KeyStore`] (as the wire form below says), so the
//! log, `$all`, exports and relayed messages hold only ciphertext. Loading decrypts it again;
//! once the subject is forgotten ([`forget_subject`], `factum forget`), its key is gone and the
//! field decodes as [`Personal::Forgotten`] — a value the domain handles, never an error —
//! while the rest of the event (its type, ids, amounts, times) stays as it was.
//!
//! On the wire the personal fields of one subject in one event share one envelope: the first
//! (in the order of the event's JSON) is `{"$personal": {"subject": "cus-7", "box": "<base64>"}}`
//! — AES-256-GCM with a key derived from the subject's (HKDF-SHA256), a fresh nonce per
//! envelope, the subject as associated data, sealing the subject's values (each its JSON after
//! 4 bytes of length) — and each other is `{"$personal": {"subject": "cus-7", "part": k}}`, its
//! value the envelope's k-th. Events written before envelopes seal each field on its own, `"sealed": "<base64>"`
//! (ChaCha20-Poly1305 with the subject's key, the value's JSON); they read as they always did.
//! In memory, before sealing and after opening, a field is
//! `{"$personal": {"subject": …, "value": …}}` or `{"$personal": {"subject": …, "forgotten": true}}`.
//!
//! The repository decodes an event with its personal fields opened as serde meets them (the
//! keys fetched once per load), without rewriting the event's JSON first; anything out of the
//! ordinary (a part before its envelope, a field the event's type reads as plain JSON, damaged
//! data) goes the long way: the JSON opened as a whole, then decoded.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;

use base64::Engine as _;
use factum_core::{EventStore, KeyStore, RecordedEvent, StoreError, SubjectKey};
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
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

#[derive(Serialize)]
struct Wire<T> {
    subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<T>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    forgotten: bool,
}

#[derive(Serialize)]
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
            },
            Personal::Forgotten { subject } => Wire {
                subject: subject.clone(),
                value: None,
                forgotten: true,
            },
        };
        Marked { personal }.serialize(serializer)
    }
}

/// A personal field as read: in the clear, forgotten, or sealed in one of the envelopes.
/// Strings are borrowed from the JSON where they can be (an empty one is one not there).
#[derive(Deserialize)]
struct WireIn<'a, T> {
    #[serde(borrow)]
    subject: Cow<'a, str>,
    #[serde(default = "none")]
    value: Option<T>,
    #[serde(default)]
    forgotten: bool,
    #[serde(default, borrow)]
    sealed: Cow<'a, str>,
    #[serde(default, borrow, rename = "box")]
    envelope: Cow<'a, str>,
    #[serde(default)]
    part: Option<usize>,
}

fn none<T>() -> Option<T> {
    None
}

#[derive(Deserialize)]
struct MarkedIn<'a, T> {
    #[serde(rename = "$personal", borrow)]
    personal: WireIn<'a, T>,
}

/// What a personal field holds.
enum Form<'a, T> {
    /// Its value in the clear.
    Known(T),
    /// Nothing: the subject was forgotten.
    Forgotten,
    /// Its value sealed.
    Sealed(SealedAt<'a>),
}

/// How a sealed field is sealed.
enum SealedAt<'a> {
    /// On its own (ChaCha20-Poly1305, base64).
    Field(Cow<'a, str>),
    /// In the envelope it carries (base64), as its first value.
    Envelope(Cow<'a, str>),
    /// As the k-th value of its subject's envelope in the same event.
    Part(usize),
}

impl<'a, T> WireIn<'a, T> {
    /// Its subject and what it holds; `None` unless it holds exactly one of a value, a
    /// forgotten mark, a sealed value, an envelope or a part.
    fn form(self) -> Option<(Cow<'a, str>, Form<'a, T>)> {
        let form = match (
            self.value,
            self.forgotten,
            self.sealed.is_empty(),
            self.envelope.is_empty(),
            self.part,
        ) {
            (Some(value), false, true, true, None) => Form::Known(value),
            (None, true, true, true, None) => Form::Forgotten,
            (None, false, false, true, None) => Form::Sealed(SealedAt::Field(self.sealed)),
            (None, false, true, false, None) => Form::Sealed(SealedAt::Envelope(self.envelope)),
            (None, false, true, true, Some(k)) => Form::Sealed(SealedAt::Part(k)),
            _ => return None,
        };
        Some((self.subject, form))
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let MarkedIn::<T> { personal } = MarkedIn::deserialize(deserializer)?;
        let Some((subject, form)) = personal.form() else {
            return Err(serde::de::Error::custom(
                "personal data needs exactly one of value, forgotten, sealed, box or part",
            ));
        };
        let sealed = match form {
            Form::Known(value) => {
                met_in_opening();
                return Ok(Personal::Known {
                    subject: subject.into_owned(),
                    value,
                });
            }
            Form::Forgotten => {
                met_in_opening();
                return Ok(Personal::Forgotten {
                    subject: subject.into_owned(),
                });
            }
            Form::Sealed(sealed) => sealed,
        };
        match open_in_opening(&subject, sealed) {
            Ok(Some(value)) => Ok(Personal::Known {
                subject: subject.into_owned(),
                value,
            }),
            Ok(None) => Ok(Personal::Forgotten {
                subject: subject.into_owned(),
            }),
            Err(reason) => Err(serde::de::Error::custom(reason)),
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
                let wanted = if sealed {
                    ["sealed", "box", "part"]
                        .iter()
                        .any(|k| inner.contains_key(*k))
                } else {
                    inner.contains_key("value")
                };
                if let (Some(Value::String(subject)), true) = (inner.get("subject"), wanted) {
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

/// A subject's key, ready for both envelopes.
pub(crate) struct Cipher {
    /// ChaCha20-Poly1305 with the subject's key: fields sealed one by one (`sealed`).
    field: LessSafeKey,
    /// AES-256-GCM with a key derived from the subject's: one envelope per event (`box`).
    envelope: LessSafeKey,
}

/// The HKDF salt and info that derive a subject's envelope key from its key: distinct keys
/// for distinct ciphers.
const ENVELOPE_SALT: &[u8] = b"factum personal data";
const ENVELOPE_INFO: &[u8] = b"envelope aes-256-gcm v1";

fn cipher(key: &SubjectKey) -> Result<Cipher, PersonalError> {
    let wrong = |_| PersonalError::Malformed("a key of the wrong length".into());
    let field = UnboundKey::new(&CHACHA20_POLY1305, key).map_err(wrong)?;
    let envelope: UnboundKey = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, ENVELOPE_SALT)
        .extract(key)
        .expand(&[ENVELOPE_INFO], &AES_256_GCM)
        .map_err(wrong)?
        .into();
    Ok(Cipher {
        field: LessSafeKey::new(field),
        envelope: LessSafeKey::new(envelope),
    })
}

/// The plaintext of `sealed` (base64 of `version`, nonce, ciphertext and tag: what
/// [`seal_with`] writes) under `aead`, in `plain` (its buffer reused).
fn unseal_into(
    aead: &LessSafeKey,
    version: &[u8],
    subject: &str,
    sealed: &str,
    plain: &mut Vec<u8>,
) -> Result<(), PersonalError> {
    let damaged = || PersonalError::Damaged(subject.to_owned());
    plain.clear();
    plain.resize(base64::decoded_len_estimate(sealed.len()), 0);
    let len = base64::engine::general_purpose::STANDARD
        .decode_slice(sealed, plain)
        .map_err(|_| damaged())?;
    plain.truncate(len);
    let head = version.len() + NONCE_LEN;
    if plain.len() < head || plain.get(..version.len()) != Some(version) {
        return Err(damaged());
    }
    let nonce =
        Nonce::try_assume_unique_for_key(plain.get(version.len()..head).unwrap_or_default())
            .map_err(|_| damaged())?;
    let len = aead
        .open_within(nonce, Aad::from(subject.as_bytes()), plain, head..)
        .map_err(|_| damaged())?
        .len();
    plain.truncate(len);
    Ok(())
}

/// The plaintext of a field sealed on its own.
fn unseal(aead: &LessSafeKey, subject: &str, sealed: &str) -> Result<Vec<u8>, PersonalError> {
    let mut plain = Vec::new();
    unseal_into(aead, &[], subject, sealed, &mut plain)?;
    Ok(plain)
}

/// `plain` sealed under `aead` with a fresh nonce: base64 of `version` (none for fields sealed
/// one by one), nonce, ciphertext and tag.
fn seal_with(
    aead: &LessSafeKey,
    random: &SystemRandom,
    version: &[u8],
    subject: &str,
    plain: &[u8],
) -> Result<String, PersonalError> {
    let mut nonce = [0u8; NONCE_LEN];
    random
        .fill(&mut nonce)
        .map_err(|_| StoreError::invalid("no randomness for a nonce"))?;
    let head = version.len() + NONCE_LEN;
    let mut bytes = Vec::with_capacity(head + plain.len() + aead.algorithm().tag_len());
    bytes.extend_from_slice(version);
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(plain);
    let tag = aead
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(subject.as_bytes()),
            bytes.get_mut(head..).unwrap_or_default(),
        )
        .map_err(|_| PersonalError::Damaged(subject.to_owned()))?;
    bytes.extend_from_slice(tag.as_ref());
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The first byte of an envelope: AES-256-GCM under the subject's derived key, the plaintext
/// its values one after another, each its JSON after 4 bytes of length (little-endian).
const ENVELOPE_V1: u8 = 1;

/// `values` (JSON each) as an envelope's plaintext.
fn envelope_plaintext(values: &[Value]) -> Result<Vec<u8>, PersonalError> {
    let mut plain = Vec::new();
    for value in values {
        let at = plain.len();
        plain.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut plain, value)
            .map_err(|e| PersonalError::Malformed(e.to_string()))?;
        let len = u32::try_from(plain.len() - at - 4)
            .map_err(|_| PersonalError::Malformed("a personal value over 4 GiB".into()))?;
        if let Some(head) = plain.get_mut(at..at + 4) {
            head.copy_from_slice(&len.to_le_bytes());
        }
    }
    Ok(plain)
}

/// An opened envelope: its plaintext, where each value lies in it, and the decode it was
/// opened for (a part is read only from its own event's envelope).
#[derive(Default)]
struct Opened {
    subject: String,
    generation: u64,
    plain: Vec<u8>,
    parts: Vec<Range<usize>>,
}

impl Opened {
    /// Opens `sealed` (base64) into this one's buffers, kept from envelope to envelope.
    fn open(
        &mut self,
        aead: &LessSafeKey,
        subject: &str,
        sealed: &str,
    ) -> Result<(), PersonalError> {
        let damaged = || PersonalError::Damaged(subject.to_owned());
        unseal_into(aead, &[ENVELOPE_V1], subject, sealed, &mut self.plain)?;
        let (plain, len) = (&self.plain, self.plain.len());
        self.parts.clear();
        let mut at = 0;
        while at < len {
            let head: [u8; 4] = plain
                .get(at..at + 4)
                .and_then(|head| head.try_into().ok())
                .ok_or_else(damaged)?;
            let part = u32::from_le_bytes(head) as usize;
            let range = at + 4..at + 4 + part;
            if range.end > len {
                return Err(damaged());
            }
            at = range.end;
            self.parts.push(range);
        }
        if self.subject != subject {
            subject.clone_into(&mut self.subject);
        }
        Ok(())
    }

    fn part(&self, k: usize) -> Option<&[u8]> {
        self.parts.get(k).and_then(|r| self.plain.get(r.clone()))
    }
}

/// Why decoding in an opening could not finish there.
pub(crate) enum Miss {
    /// A subject whose key is not fetched yet: fetch it and decode again.
    Key(String),
    /// Something only the long way reads right: open the JSON as a whole, then decode.
    Elsewhere,
}

/// What a decode in [`Keys::decoding`] opens personal fields with.
struct Opening {
    keys: Keys,
    /// Personal fields decoded.
    met: usize,
    miss: Option<Miss>,
}

thread_local! {
    static OPENING: RefCell<Option<Opening>> = const { RefCell::new(None) };
}

/// A sealed field's value as opened in an opening.
enum Got {
    /// Its subject was forgotten.
    Forgotten,
    /// The JSON of a field sealed on its own.
    Field(Vec<u8>),
    /// An envelope's plaintext (lent out while the value is decoded, then given back to the
    /// envelope at `at`) and where the value lies in it.
    Part {
        plain: Vec<u8>,
        range: Range<usize>,
        at: usize,
    },
}

fn met_in_opening() {
    OPENING.with(|cell| {
        if let Some(opening) = cell.borrow_mut().as_mut() {
            opening.met += 1;
        }
    });
}

fn miss_in_opening(miss: Miss) {
    OPENING.with(|cell| {
        if let Some(opening) = cell.borrow_mut().as_mut() {
            opening.miss.get_or_insert(miss);
        }
    });
}

const STILL_SEALED: &str = "personal data still sealed: decode the event through the repository, which opens it with the store's keys";

/// Opens a sealed field with the keys of the decode in progress on this thread, and decodes
/// its value; `None` when its subject was forgotten. The error is serde's message: no opening
/// (the event was not decoded through a repository), or a [`Miss`] noted for the repository.
fn open_in_opening<T: DeserializeOwned>(
    subject: &str,
    sealed: SealedAt<'_>,
) -> Result<Option<T>, String> {
    let got = OPENING.with(|cell| {
        let mut cell = cell.borrow_mut();
        let Some(opening) = cell.as_mut() else {
            return Err(STILL_SEALED.to_owned());
        };
        let got = opening.keys.open_sealed(subject, sealed);
        match got {
            Ok(got) => {
                opening.met += 1;
                Ok(got)
            }
            Err(miss) => {
                opening.miss.get_or_insert(miss);
                Err(STILL_SEALED.to_owned())
            }
        }
    })?;
    // The value is decoded outside the opening's borrow: it may hold personal fields itself.
    let decoded = match &got {
        Got::Forgotten => return Ok(None),
        Got::Field(json) => serde_json::from_slice(json),
        Got::Part { plain, range, .. } => {
            serde_json::from_slice(plain.get(range.clone()).unwrap_or_default())
        }
    };
    if let Got::Part { plain, at, .. } = got {
        OPENING.with(|cell| {
            if let Some(opening) = cell.borrow_mut().as_mut()
                && let Some(opened) = opening.keys.opened.get_mut(at)
            {
                opened.plain = plain;
            }
        });
    }
    match decoded {
        Ok(value) => Ok(Some(value)),
        Err(_) => {
            miss_in_opening(Miss::Elsewhere);
            Err(PersonalError::Damaged(subject.to_owned()).to_string())
        }
    }
}

/// A personal field found in compact JSON: where it starts and ends (the whole
/// `{"$personal":{…}}` object), its subject, and how it is sealed (`None`: it holds its value
/// in the clear or is marked forgotten, nothing to open).
struct CompactField<'a> {
    start: usize,
    end: usize,
    subject: Cow<'a, str>,
    sealed: Option<SealedAt<'a>>,
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
        let mut reader = serde_json::Deserializer::from_slice(data.get(inner_at..)?)
            .into_iter::<WireIn<serde::de::IgnoredAny>>();
        let field = match reader.next()? {
            Ok(wire) => {
                let end = inner_at + reader.byte_offset();
                if data.get(end) != Some(&b'}') {
                    return None;
                }
                at = end + 1;
                match wire.form() {
                    Some((subject, form)) => Ok(CompactField {
                        start,
                        end: end + 1,
                        subject,
                        sealed: match form {
                            Form::Sealed(sealed) => Some(sealed),
                            Form::Known(_) | Form::Forgotten => None,
                        },
                    }),
                    None => Err(PersonalError::Malformed(
                        "a personal field that is not one of value, forgotten, sealed, box or part"
                            .into(),
                    )),
                }
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
    /// Each subject's cipher; `None` when it has no key (forgotten).
    known: HashMap<String, Option<Cipher>>,
    /// The envelopes opened, one per subject, their buffers kept from event to event.
    opened: Vec<Opened>,
    /// Counts the decodes, so that a part is read only from its own event's envelope.
    generation: u64,
}

impl Keys {
    /// A sealed field met in a decode, opened: what the decode then reads, or what it missed.
    fn open_sealed(&mut self, subject: &str, sealed: SealedAt<'_>) -> Result<Got, Miss> {
        let cipher = match self.known.get(subject) {
            None => return Err(Miss::Key(subject.to_owned())),
            Some(None) => return Ok(Got::Forgotten),
            Some(Some(cipher)) => cipher,
        };
        let (at, k) = match sealed {
            SealedAt::Field(sealed) => {
                return unseal(&cipher.field, subject, &sealed)
                    .map(Got::Field)
                    .map_err(|_| Miss::Elsewhere);
            }
            SealedAt::Envelope(sealed) => {
                let at = match self.opened.iter().position(|o| o.subject == subject) {
                    Some(at) => at,
                    None => {
                        self.opened.push(Opened::default());
                        self.opened.len() - 1
                    }
                };
                let opened = self.opened.get_mut(at).ok_or(Miss::Elsewhere)?;
                opened.generation = self.generation;
                if opened.open(&cipher.envelope, subject, &sealed).is_err() {
                    // Not to be read by a later part.
                    opened.generation = 0;
                    return Err(Miss::Elsewhere);
                }
                (at, 0)
            }
            SealedAt::Part(k) => {
                let at = self
                    .opened
                    .iter()
                    .position(|o| o.subject == subject && o.generation == self.generation)
                    .ok_or(Miss::Elsewhere)?;
                (at, k)
            }
        };
        let opened = self.opened.get_mut(at).ok_or(Miss::Elsewhere)?;
        let range = opened.parts.get(k).cloned().ok_or(Miss::Elsewhere)?;
        if opened.plain.len() < range.end {
            // Lent out to a decode in progress (a value holding personal fields itself).
            return Err(Miss::Elsewhere);
        }
        Ok(Got::Part {
            plain: std::mem::take(&mut opened.plain),
            range,
            at,
        })
    }

    /// Makes sure every subject with plain personal data in `value` has a key (a new random one
    /// when it has none), then encrypts that data in place: one envelope per subject, in the
    /// subject's first field, the others pointing into it.
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
        for subject in &found {
            if matches!(self.known.get(subject), Some(Some(_))) {
                continue;
            }
            let mut key = [0u8; 32];
            random
                .fill(&mut key)
                .map_err(|_| StoreError::invalid("no randomness for a new key"))?;
            let key = store.add_key(subject, key).await?;
            self.known.insert(subject.clone(), Some(cipher(&key)?));
        }
        // Each subject's values in the order of the JSON, then one envelope for them.
        let mut values: HashMap<String, Vec<Value>> = HashMap::new();
        each_personal(value, &mut |inner| {
            let subject = subject_of(inner)?;
            if let Some(plain) = inner.get("value") {
                values.entry(subject).or_default().push(plain.clone());
            }
            Ok(())
        })?;
        let mut envelopes = HashMap::new();
        for (subject, values) in values {
            let Some(Some(cipher)) = self.known.get(&subject) else {
                return Err(PersonalError::NoKeyStore);
            };
            let plain = envelope_plaintext(&values)?;
            let sealed = seal_with(&cipher.envelope, &random, &[ENVELOPE_V1], &subject, &plain)?;
            envelopes.insert(subject, (Some(sealed), 0usize));
        }
        each_personal(value, &mut |inner| {
            let subject = subject_of(inner)?;
            if inner.remove("value").is_none() {
                return Ok(());
            }
            let Some((envelope, next)) = envelopes.get_mut(&subject) else {
                return Err(PersonalError::NoKeyStore);
            };
            match envelope.take() {
                Some(sealed) => inner.insert("box".into(), Value::String(sealed)),
                None => inner.insert("part".into(), Value::from(*next)),
            };
            *next += 1;
            Ok(())
        })
    }

    /// Fetches the key of `subject` unless it is fetched already.
    async fn fetch_one(
        &mut self,
        store: Option<&Arc<dyn KeyStore>>,
        subject: &str,
    ) -> Result<(), PersonalError> {
        if self.known.contains_key(subject) {
            return Ok(());
        }
        let store = store.ok_or(PersonalError::NoKeyStore)?;
        let key = store.key(subject).await?.as_ref().map(cipher).transpose()?;
        self.known.insert(subject.to_owned(), key);
        Ok(())
    }

    /// Fetches the keys of the subjects whose sealed data `value` holds (those not fetched yet).
    async fn fetch(
        &mut self,
        store: Option<&Arc<dyn KeyStore>>,
        value: &Value,
    ) -> Result<(), PersonalError> {
        let mut found = BTreeSet::new();
        subjects(value, true, &mut found);
        for subject in found {
            self.fetch_one(store, &subject).await?;
        }
        Ok(())
    }

    /// Runs `decode` (a serde decode of stored JSON) with these keys opening each personal
    /// field it meets, and says what it missed, if anything: then its result is not to be
    /// trusted. `fields` is how many personal fields the JSON holds: a decode that meets fewer
    /// (a type that reads some as plain JSON) missed them.
    pub(crate) fn decoding<R>(
        &mut self,
        fields: usize,
        decode: impl FnOnce() -> R,
    ) -> (R, Option<Miss>) {
        /// Puts the keys back even if `decode` panics.
        struct Restore<'k>(&'k mut Keys, Option<Opening>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                if let Some(opening) = OPENING.with(|cell| cell.replace(self.1.take())) {
                    *self.0 = opening.keys;
                }
            }
        }
        self.generation += 1;
        let opening = Opening {
            keys: std::mem::take(self),
            met: 0,
            miss: None,
        };
        let outer = OPENING.with(|cell| cell.replace(Some(opening)));
        let restore = Restore(self, outer);
        let decoded = decode();
        let (met, miss) = OPENING.with(|cell| {
            let mut cell = cell.borrow_mut();
            match cell.as_mut() {
                Some(opening) => (opening.met, opening.miss.take()),
                None => (0, Some(Miss::Elsewhere)),
            }
        });
        drop(restore);
        let miss = miss.or_else(|| (met < fields).then_some(Miss::Elsewhere));
        (decoded, miss)
    }

    /// Decodes stored JSON `data` whose personal fields (`fields` of them) are opened with
    /// these keys as the decode meets them, fetching each subject's key the first time. When
    /// that cannot be done in one go, the JSON is opened as a whole first and
    /// `decode(Some(opened))` reads it; `decode(None)` reads `data` as stored.
    pub(crate) async fn decode_opened<E, Err: From<PersonalError>>(
        &mut self,
        store: Option<&Arc<dyn KeyStore>>,
        data: &[u8],
        fields: usize,
        decode: impl Fn(Option<&[u8]>) -> Result<E, Err>,
    ) -> Result<E, Err> {
        loop {
            match self.decoding(fields, || decode(None)) {
                (decoded, None) => return decoded,
                (_, Some(Miss::Key(subject))) => self.fetch_one(store, &subject).await?,
                (_, Some(Miss::Elsewhere)) => {
                    return match self.open_json(store, data).await? {
                        Some(opened) => decode(Some(&opened)),
                        None => decode(None),
                    };
                }
            }
        }
    }

    /// JSON `data` with each sealed personal field opened: decrypted with its subject's key
    /// (fetched the first time the subject is met), or marked forgotten. `None` when it holds
    /// no personal data.
    pub(crate) async fn open_json(
        &mut self,
        store: Option<&Arc<dyn KeyStore>>,
        data: &[u8],
    ) -> Result<Option<Vec<u8>>, PersonalError> {
        if personal_mentions(data) == 0 {
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
    /// other means), or a part comes before its envelope: [`Keys::open`] reads it then.
    async fn open_compact(
        &mut self,
        store: Option<&Arc<dyn KeyStore>>,
        data: &[u8],
    ) -> Result<Option<Vec<u8>>, PersonalError> {
        let Some(fields) = compact_fields(data) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(data.len());
        let mut opened: Vec<Opened> = Vec::new();
        let mut copied = 0;
        for field in fields {
            let field = field?;
            let Some(sealed) = field.sealed else {
                continue;
            };
            let subject = field.subject;
            self.fetch_one(store, &subject).await?;
            let value = match self.known.get(subject.as_ref()).and_then(Option::as_ref) {
                None => None,
                Some(cipher) => Some(match sealed {
                    SealedAt::Field(sealed) => unseal(&cipher.field, &subject, &sealed)?,
                    SealedAt::Envelope(sealed) => {
                        let mut envelope = Opened::default();
                        envelope.open(&cipher.envelope, &subject, &sealed)?;
                        let first = envelope
                            .part(0)
                            .ok_or_else(|| PersonalError::Damaged(subject.clone().into_owned()))?
                            .to_vec();
                        opened.retain(|o| o.subject != subject);
                        opened.push(envelope);
                        first
                    }
                    SealedAt::Part(k) => {
                        let Some(envelope) = opened.iter().find(|o| o.subject == subject) else {
                            return Ok(None);
                        };
                        envelope
                            .part(k)
                            .ok_or_else(|| PersonalError::Damaged(subject.clone().into_owned()))?
                            .to_vec()
                    }
                }),
            };
            out.extend_from_slice(data.get(copied..field.start).unwrap_or_default());
            out.extend_from_slice(b"{\"$personal\":{\"subject\":");
            serde_json::to_writer(&mut out, subject.as_ref())
                .map_err(|e| PersonalError::Malformed(e.to_string()))?;
            match value {
                Some(value) => {
                    out.extend_from_slice(b",\"value\":");
                    out.extend_from_slice(&value);
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
    /// key any more becomes `forgotten`. Envelopes are opened first, so a part may come before
    /// its envelope.
    fn open(&self, value: &mut Value) -> Result<(), PersonalError> {
        let mut envelopes: HashMap<String, Vec<Value>> = HashMap::new();
        each_personal(value, &mut |inner| {
            let subject = subject_of(inner)?;
            let (Some(Value::String(sealed)), Some(Some(cipher))) =
                (inner.get("box"), self.known.get(&subject))
            else {
                return Ok(());
            };
            let mut envelope = Opened::default();
            envelope.open(&cipher.envelope, &subject, sealed)?;
            let values = (0..envelope.parts.len())
                .map(|k| {
                    envelope
                        .part(k)
                        .and_then(|json| serde_json::from_slice(json).ok())
                        .ok_or_else(|| PersonalError::Damaged(subject.clone()))
                })
                .collect::<Result<Vec<Value>, _>>()?;
            envelopes.insert(subject, values);
            Ok(())
        })?;
        each_personal(value, &mut |inner| {
            let subject = subject_of(inner)?;
            let sealed = if let Some(Value::String(sealed)) = inner.remove("sealed") {
                SealedAt::Field(Cow::Owned(sealed))
            } else if inner.remove("box").is_some() {
                SealedAt::Part(0)
            } else if let Some(part) = inner.remove("part") {
                let k = part
                    .as_u64()
                    .and_then(|k| usize::try_from(k).ok())
                    .ok_or_else(|| {
                        PersonalError::Malformed(Value::Object(inner.clone()).to_string())
                    })?;
                SealedAt::Part(k)
            } else {
                return Ok(());
            };
            let Some(cipher) = self.known.get(&subject).and_then(Option::as_ref) else {
                inner.insert("forgotten".into(), Value::Bool(true));
                return Ok(());
            };
            let damaged = || PersonalError::Damaged(subject.clone());
            let value = match sealed {
                SealedAt::Field(sealed) => {
                    let plain = unseal(&cipher.field, &subject, &sealed)?;
                    serde_json::from_slice(&plain).map_err(|_| damaged())?
                }
                SealedAt::Envelope(_) => return Err(damaged()),
                SealedAt::Part(k) => envelopes
                    .get(&subject)
                    .and_then(|values| values.get(k))
                    .cloned()
                    .ok_or_else(damaged)?,
            };
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

/// How many times `"$personal"` occurs in `bytes`: at least how many personal fields they
/// hold (exactly that many in compact JSON).
pub(crate) fn personal_mentions(bytes: &[u8]) -> usize {
    PERSONAL_FINDER.find_iter(bytes).count()
}

/// JSON `bytes` (a snapshot's state) with their plain personal data sealed with `store`'s
/// keys; unchanged when they hold none.
pub(crate) async fn seal_bytes(
    store: &dyn EventStore,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, PersonalError> {
    if personal_mentions(&bytes) == 0 {
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

    /// `value` sealed as events were before envelopes: each field on its own.
    fn seal_fields_one_by_one(keys: &Keys, value: &mut Value) {
        let random = SystemRandom::new();
        each_personal(value, &mut |inner| {
            let subject = subject_of(inner)?;
            let plain = serde_json::to_vec(&inner.remove("value").unwrap()).unwrap();
            let cipher = keys.known.get(&subject).unwrap().as_ref().unwrap();
            let sealed = seal_with(&cipher.field, &random, &[], &subject, &plain)?;
            inner.insert("sealed".into(), Value::String(sealed));
            Ok(())
        })
        .unwrap();
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Contact {
        name: Personal<String>,
        email: Personal<String>,
        phones: Personal<Vec<String>>,
        partner: Personal<String>,
        amount: u64,
    }

    fn contact() -> Contact {
        Contact {
            name: Personal::new("cus-1", "Ann".into()),
            email: Personal::new("cus-1", "ann@example.com".into()),
            phones: Personal::new("cus-1", vec!["+45 1".into(), "+45 2".into()]),
            partner: Personal::new("cus-\"2\"", "Bob".into()),
            amount: 7,
        }
    }

    /// Decodes `data` as the repository does: fields opened as serde meets them, the long way
    /// when that cannot be done.
    async fn decode<T: DeserializeOwned>(
        keys: &mut Keys,
        store: &Arc<dyn KeyStore>,
        data: &[u8],
    ) -> Result<T, PersonalError> {
        let fields = personal_mentions(data);
        keys.decode_opened(Some(store), data, fields, |opened| {
            serde_json::from_slice(opened.unwrap_or(data))
                .map_err(|e| PersonalError::Malformed(e.to_string()))
        })
        .await
    }

    /// `data` opened in place (the JSON rewritten with the fields opened), then decoded.
    async fn opened_in_place(store: &Arc<dyn KeyStore>, data: &[u8]) -> Contact {
        let opened = Keys::default()
            .open_json(Some(store), data)
            .await
            .unwrap()
            .unwrap();
        serde_json::from_slice(&opened).unwrap()
    }

    #[tokio::test]
    async fn one_envelope_per_subject_opens_in_every_order_and_fields_sealed_one_by_one_still_open()
    {
        let store: Arc<dyn KeyStore> = Arc::new(factum_core::MemoryKeyStore::default());
        let mut value = serde_json::to_value(contact()).unwrap();
        let mut keys = Keys::default();
        keys.seal(Some(&store), &mut value).await.unwrap();
        let stored = serde_json::to_vec(&value).unwrap();
        let text = String::from_utf8(stored.clone()).unwrap();
        // One envelope per subject, the subject's other fields pointing into it.
        assert_eq!(text.matches("\"box\"").count(), 2, "{text}");
        assert_eq!(text.matches("\"part\"").count(), 2, "{text}");
        for plain in ["Ann", "ann@example.com", "+45", "Bob"] {
            assert!(!text.contains(plain), "{text}");
        }

        // Opened as serde meets the fields, the keys fetched on the way.
        let mut reader = Keys::default();
        assert_eq!(
            decode::<Contact>(&mut reader, &store, &stored)
                .await
                .unwrap(),
            contact()
        );
        // With the keys fetched, in one go: no JSON opened first.
        let fields = personal_mentions(&stored);
        let (decoded, miss) =
            reader.decoding(fields, || serde_json::from_slice::<Contact>(&stored));
        assert!(miss.is_none());
        assert_eq!(decoded.unwrap(), contact());
        // Opened in place and as a tree: the same.
        assert_eq!(opened_in_place(&store, &stored).await, contact());
        let mut tree = value.clone();
        let mut tree_keys = Keys::default();
        tree_keys.fetch(Some(&store), &tree).await.unwrap();
        tree_keys.open(&mut tree).unwrap();
        assert_eq!(serde_json::from_value::<Contact>(tree).unwrap(), contact());

        // A part before its envelope (the JSON's fields in another order): the long way.
        let Value::Object(map) = &value else { panic!() };
        let mut reordered = b"{".to_vec();
        for (i, (key, field)) in map.iter().rev().enumerate() {
            if i > 0 {
                reordered.push(b',');
            }
            serde_json::to_writer(&mut reordered, key).unwrap();
            reordered.push(b':');
            serde_json::to_writer(&mut reordered, field).unwrap();
        }
        reordered.push(b'}');
        assert_ne!(reordered, stored);
        let (_, miss) = reader.decoding(fields, || serde_json::from_slice::<Contact>(&reordered));
        assert!(matches!(miss, Some(Miss::Elsewhere)));
        assert_eq!(
            decode::<Contact>(&mut Keys::default(), &store, &reordered)
                .await
                .unwrap(),
            contact()
        );
        // A type that reads a personal field as plain JSON gets it opened.
        #[derive(Deserialize)]
        struct Loose {
            email: Value,
            name: Personal<String>,
        }
        let loose: Loose = decode(&mut Keys::default(), &store, &stored).await.unwrap();
        assert_eq!(loose.email["$personal"]["value"], "ann@example.com");
        assert_eq!(loose.name.value().map(String::as_str), Some("Ann"));

        // Sealed field by field, as before envelopes: every path reads it.
        let mut old = serde_json::to_value(contact()).unwrap();
        seal_fields_one_by_one(&keys, &mut old);
        let old = serde_json::to_vec(&old).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&old).matches("\"sealed\"").count(),
            4
        );
        assert_eq!(
            decode::<Contact>(&mut Keys::default(), &store, &old)
                .await
                .unwrap(),
            contact()
        );
        assert_eq!(opened_in_place(&store, &old).await, contact());

        // Damaged: a typed error, on every path.
        let damaged = text
            .replacen("\"box\":\"", "\"box\":\"AAAA", 1)
            .into_bytes();
        assert!(matches!(
            decode::<Contact>(&mut Keys::default(), &store, &damaged).await,
            Err(PersonalError::Damaged(_))
        ));
        assert!(matches!(
            Keys::default().open_json(Some(&store), &damaged).await,
            Err(PersonalError::Damaged(_))
        ));
        // Outside a repository's decode, sealed data is refused, not misread.
        assert!(serde_json::from_slice::<Contact>(&stored).is_err());

        // One subject forgotten: its fields, parts included, read as forgotten; the other's not.
        assert!(store.forget("cus-1").await.unwrap());
        for data in [&stored, &reordered, &old] {
            let read: Contact = decode(&mut Keys::default(), &store, data).await.unwrap();
            assert!(read.name.is_forgotten() && read.email.is_forgotten());
            assert!(read.phones.is_forgotten());
            assert_eq!(read.partner, contact().partner);
            assert_eq!(read.amount, 7);
        }
    }

    #[tokio::test]
    async fn a_personal_value_that_holds_personal_fields_itself_opens_whole() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Address {
            street: Personal<String>,
            city: String,
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Moved {
            to: Personal<Address>,
            phone: Personal<String>,
        }
        let moved = Moved {
            to: Personal::new(
                "cus-1",
                Address {
                    street: Personal::new("cus-1", "Main St 1".into()),
                    city: "Aarhus".into(),
                },
            ),
            phone: Personal::new("cus-1", "+45 1".into()),
        };
        let store: Arc<dyn KeyStore> = Arc::new(factum_core::MemoryKeyStore::default());
        let mut value = serde_json::to_value(&moved).unwrap();
        Keys::default()
            .seal(Some(&store), &mut value)
            .await
            .unwrap();
        let stored = serde_json::to_vec(&value).unwrap();
        let text = String::from_utf8_lossy(&stored);
        assert!(
            !text.contains("Main St") && !text.contains("Aarhus"),
            "{text}"
        );
        let mut keys = Keys::default();
        assert_eq!(
            decode::<Moved>(&mut keys, &store, &stored).await.unwrap(),
            moved
        );
        let fields = personal_mentions(&stored);
        let (decoded, miss) = keys.decoding(fields, || serde_json::from_slice::<Moved>(&stored));
        assert!(miss.is_none());
        assert_eq!(decoded.unwrap(), moved);
    }
}
