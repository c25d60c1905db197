//! Keys for personal data on PostgreSQL: the table `subject_keys` of the store's schema, one row
//! per subject. Forgetting deletes the row and then vacuums the table, so the key's bytes do
//! not linger in a dead row version.

use async_trait::async_trait;
use factum_core::{KeyStore, StoreError, SubjectKey, validate_subject};
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::conn::{Target, unavailable};

/// The key store of a [`PgStore`](crate::PgStore) (see [`factum_core::KeyStore`]).
pub struct PgKeyStore {
    target: Target,
    client: Mutex<Option<Client>>,
}

impl PgKeyStore {
    pub(crate) fn new(target: Target) -> Self {
        PgKeyStore {
            target,
            client: Mutex::new(None),
        }
    }

    /// Runs `work` on the key store's connection, connecting first when it has none (or lost
    /// it).
    async fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut held = self.client.lock().await;
        if held.as_ref().is_none_or(Client::is_closed) {
            *held = Some(self.target.connect().await?);
        }
        let Some(client) = held.as_ref() else {
            return Err(StoreError::Unavailable("no connection".into()));
        };
        let result = work(client).await;
        if result.is_err() {
            *held = None;
        }
        result.map_err(unavailable)
    }
}

fn key_of(bytes: &[u8]) -> Result<SubjectKey, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupted {
        file: "postgresql:subject_keys".into(),
        offset: 0,
        reason: format!("a key of {} bytes", bytes.len()),
    })
}

#[async_trait]
impl KeyStore for PgKeyStore {
    async fn key(&self, subject: &str) -> Result<Option<SubjectKey>, StoreError> {
        validate_subject(subject)?;
        let row = self
            .with_client(async |client| {
                client
                    .query_opt(
                        "SELECT key FROM subject_keys WHERE subject = $1",
                        &[&subject],
                    )
                    .await
            })
            .await?;
        row.map(|row| key_of(row.get::<_, &[u8]>(0))).transpose()
    }

    async fn add_key(&self, subject: &str, key: SubjectKey) -> Result<SubjectKey, StoreError> {
        validate_subject(subject)?;
        let row = self
            .with_client(async |client| {
                client
                    .query_one(
                        "WITH added AS (
                             INSERT INTO subject_keys (subject, key) VALUES ($1, $2)
                             ON CONFLICT (subject) DO NOTHING RETURNING key)
                         SELECT key FROM added
                         UNION ALL SELECT key FROM subject_keys WHERE subject = $1
                         LIMIT 1",
                        &[&subject, &key.as_slice()],
                    )
                    .await
            })
            .await?;
        key_of(row.get::<_, &[u8]>(0))
    }

    async fn forget(&self, subject: &str) -> Result<bool, StoreError> {
        validate_subject(subject)?;
        let deleted = self
            .with_client(async |client| {
                let deleted = client
                    .execute("DELETE FROM subject_keys WHERE subject = $1", &[&subject])
                    .await?;
                if deleted > 0 {
                    client.batch_execute("VACUUM subject_keys").await?;
                }
                Ok(deleted)
            })
            .await?;
        Ok(deleted > 0)
    }
}
