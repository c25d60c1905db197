//! Which store a command works on: the embedded store in `--data-dir`, or a PostgreSQL store
//! when `--store postgres://…` is given.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use factum::{Engine, EngineOptions, EventStore, PgOptions, PgStore, RecordedEvent, StoreError};

/// Where the store is, from the command line.
#[derive(Clone, Debug)]
pub struct Location {
    /// The embedded store's data directory.
    pub data_dir: PathBuf,
    /// A PostgreSQL connection URL, when the store lives there.
    pub postgres: Option<String>,
    /// The PostgreSQL schema of the store.
    pub schema: String,
}

impl Location {
    /// Checks `--store`: empty or a `postgres://` / `postgresql://` URL.
    pub fn new(data_dir: PathBuf, store: Option<String>, schema: String) -> Result<Self> {
        let postgres = match store {
            None => None,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Some(url)
            }
            Some(other) => bail!(crate::bad(format!(
                "--store '{other}': give a PostgreSQL URL (postgres://user@host/db), or leave it out for the embedded store in --data-dir"
            ))),
        };
        Ok(Location {
            data_dir,
            postgres,
            schema,
        })
    }

    /// What the store is, for messages (without a password).
    pub fn describe(&self) -> String {
        match &self.postgres {
            None => format!("data: {}", self.data_dir.display()),
            Some(url) => format!("store: PostgreSQL {}, schema {}", redact(url), self.schema),
        }
    }
}

/// A URL with its password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// An open store of either kind.
#[derive(Clone)]
pub enum Store {
    /// The embedded engine.
    Embedded(Engine),
    /// PostgreSQL.
    Postgres(PgStore),
}

impl Store {
    /// Opens the store a command names.
    pub async fn open(location: &Location) -> Result<Self> {
        Ok(match &location.postgres {
            None => Store::Embedded(Engine::open(&location.data_dir, EngineOptions::default())?),
            Some(url) => Store::Postgres(
                PgStore::connect(
                    url,
                    PgOptions {
                        schema: location.schema.clone(),
                        ..PgOptions::default()
                    },
                )
                .await
                .context("opening the PostgreSQL store")?,
            ),
        })
    }

    /// Opens the store for reading only: the embedded store's directory is not written at all
    /// (see [`Engine::open_read_only`]); PostgreSQL opens as for any command.
    pub async fn open_read_only(location: &Location) -> Result<Self> {
        match &location.postgres {
            None => Ok(Store::Embedded(Engine::open_read_only(&location.data_dir)?)),
            Some(_) => Self::open(location).await,
        }
    }

    /// The store as the trait every backend implements.
    pub fn shared(&self) -> Arc<dyn EventStore> {
        match self {
            Store::Embedded(engine) => Arc::new(engine.clone()),
            Store::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// Stores exported events as they are.
    pub async fn import(&self, events: Vec<RecordedEvent>) -> Result<(), StoreError> {
        match self {
            Store::Embedded(engine) => engine.import(events).await,
            Store::Postgres(store) => store.import(events).await,
        }
    }

    /// Closes the store (the embedded one writes its index).
    pub fn close(&self) -> Result<(), StoreError> {
        match self {
            Store::Embedded(engine) => engine.close(),
            Store::Postgres(_) => Ok(()),
        }
    }

    /// Checks every stored event. The embedded store checks every checksum of its files; a
    /// PostgreSQL store reads every event back (each must decode) and checks that positions
    /// are dense and each stream's revisions continue. `progress` gets (done, total) in bytes
    /// or events.
    pub async fn verify(&self, progress: impl FnMut(u64, u64)) -> Result<serde_json::Value> {
        match self {
            Store::Embedded(engine) => {
                let report = engine.verify(progress)?;
                Ok(serde_json::json!({
                    "ok": true,
                    "segments": report.segments,
                    "appends": report.frames,
                    "events": report.events,
                    "removed": report.removed,
                    "bytes": report.bytes,
                }))
            }
            Store::Postgres(store) => {
                let report = store.verify(progress).await?;
                Ok(serde_json::json!({
                    "ok": true,
                    "events": report.events,
                    "removed": report.removed,
                    "streams": report.streams,
                    "bytes": report.bytes,
                }))
            }
        }
    }
}

impl std::ops::Deref for Store {
    type Target = dyn EventStore;

    fn deref(&self) -> &Self::Target {
        match self {
            Store::Embedded(engine) => engine,
            Store::Postgres(store) => store,
        }
    }
}
