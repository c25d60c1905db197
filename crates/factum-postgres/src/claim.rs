//! Claims across processes: session-level advisory locks, all of one store's on one connection
//! of their own (the claims session). PostgreSQL releases them when that connection ends, so a
//! runner that crashes, or whose machine goes away, frees its names for the copies that wait.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use factum_core::backend::check_claim_name;
use factum_core::{Claim, StoreError};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use crate::conn::{Target, unavailable};

/// How often the claims session checks that its connection still answers.
const PING_EVERY: Duration = Duration::from_secs(3);
/// How long a check may take before the session's claims count as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// The server drops a silent holder's connection (and so its locks) after about
/// 10 + 5 × 3 = 25 s without an answer to its keepalives, well after the holder itself has given
/// up (at most `PING_EVERY + PING_TIMEOUT` after its last answer).
const SERVER_KEEPALIVES: &str =
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3";
/// SQL that finds the server process (`pid`, as in `pg_stat_activity`) of the connection
/// holding a claim, given `$1` = `'{schema}.{name}'`: no row when nobody holds it. For operators
/// (who holds this relay?) and tests (end that connection).
pub const PG_CLAIM_HOLDER_SQL: &str = "SELECT l.pid FROM pg_locks l \
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
    AND (l.classid::bigint << 32 | l.objid::bigint) = hashtextextended($1, 0)";
const LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended($1, 0))";

/// A store's claims: the names it holds, and the session that holds their locks.
pub(crate) struct Claims {
    target: Target,
    schema: String,
    /// Names held through this store. PostgreSQL's advisory locks can be taken again by the
    /// session that holds them, so a second runner in this process is turned away here.
    held: Arc<Mutex<HashSet<String>>>,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

/// The connection that holds a store's locks. Taken out (closing it) when it fails a check.
struct Session {
    client: Mutex<Option<Arc<Client>>>,
    lost: watch::Sender<bool>,
    /// Keys of dropped claims, unlocked by the session's own task (a claim may be dropped
    /// where no runtime runs; sending needs none).
    unlock: mpsc::UnboundedSender<String>,
}

impl Session {
    fn client(&self) -> Option<Arc<Client>> {
        self.client.lock().clone()
    }

    fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Every claim of the session is lost; the connection closes once no query uses it.
    fn lose(&self) {
        self.client.lock().take();
        self.lost.send_replace(true);
    }
}

/// The lock's key: the name within the store's schema.
fn key(schema: &str, name: &str) -> String {
    format!("{schema}.{name}")
}

impl Claims {
    pub fn new(target: Target, schema: String) -> Self {
        Claims {
            target,
            schema,
            held: Arc::default(),
            session: tokio::sync::Mutex::new(None),
        }
    }

    /// Takes the lock for `name` if no one holds it, in this process or another.
    pub async fn claim(&self, name: &str) -> Result<Option<Claim>, StoreError> {
        check_claim_name(name)?;
        if !self.held.lock().insert(name.to_owned()) {
            return Ok(None);
        }
        let taken = self.lock(name).await;
        if !matches!(taken, Ok(Some(_))) {
            self.held.lock().remove(name);
        }
        taken
    }

    async fn lock(&self, name: &str) -> Result<Option<Claim>, StoreError> {
        let session = self.session().await?;
        let client = session
            .client()
            .ok_or_else(|| StoreError::Unavailable("the claims connection failed".into()))?;
        let key = key(&self.schema, name);
        let row = client.query_one(LOCK, &[&key]).await.map_err(unavailable)?;
        if !row.get::<_, bool>(0) {
            return Ok(None);
        }
        let lost = session.lost.subscribe();
        let release = Release {
            held: self.held.clone(),
            name: name.to_owned(),
            key,
            session,
        };
        Ok(Some(Claim::new(name, lost, release)))
    }

    /// The claims session, opened when there is none or the last one failed.
    async fn session(&self) -> Result<Arc<Session>, StoreError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref()
            && !session.is_lost()
        {
            return Ok(session.clone());
        }
        let (client, mut closed) = self.target.connect_watched().await?;
        // Named for whoever looks at `pg_stat_activity`.
        let name = application_name(&self.schema);
        client
            .execute("SELECT set_config('application_name', $1, false)", &[&name])
            .await
            .map_err(unavailable)?;
        client
            .batch_execute(SERVER_KEEPALIVES)
            .await
            .map_err(unavailable)?;
        let (unlock, mut unlocks) = mpsc::unbounded_channel::<String>();
        let session = Arc::new(Session {
            client: Mutex::new(Some(Arc::new(client))),
            lost: watch::channel(false).0,
            unlock,
        });
        let watched: Weak<Session> = Arc::downgrade(&session);
        let schema = self.schema.clone();
        tokio::spawn(async move {
            let mut next_ping = tokio::time::Instant::now() + PING_EVERY;
            loop {
                let unlocking = tokio::select! {
                    _ = &mut closed => {
                        tracing::warn!(%schema, "the claims connection closed");
                        break;
                    }
                    key = unlocks.recv() => key,
                    () = tokio::time::sleep_until(next_ping) => None,
                };
                // Gone with the store and its claims: nothing to watch.
                let Some(client) = watched.upgrade().and_then(|s| s.client()) else {
                    return;
                };
                if let Some(key) = unlocking {
                    // A failure here is the connection's: the next ping finds it.
                    if let Err(e) = client.query_one(UNLOCK, &[&key]).await {
                        tracing::debug!(%schema, error = %e, "releasing a claim failed");
                    }
                    continue;
                }
                next_ping = tokio::time::Instant::now() + PING_EVERY;
                match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(%schema, error = %e, "the claims connection failed");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(%schema, "the claims connection stopped answering");
                        break;
                    }
                }
            }
            if let Some(session) = watched.upgrade() {
                session.lose();
            }
        });
        *slot = Some(session.clone());
        Ok(session)
    }
}

/// Releases a claim when dropped: the name here, the lock in the database.
struct Release {
    held: Arc<Mutex<HashSet<String>>>,
    name: String,
    key: String,
    session: Arc<Session>,
}

impl Drop for Release {
    fn drop(&mut self) {
        // The name is free here at once; a claim of it again before the unlock below runs
        // takes the session's lock a second time, which the unlock then leaves held once.
        self.held.lock().remove(&self.name);
        if self.session.client().is_some() {
            // Fails only when the session's task has ended: then so has its connection, and
            // PostgreSQL released the lock with it.
            let _ = self.session.unlock.send(std::mem::take(&mut self.key));
        }
    }
}

/// `factum claims {schema}`, cut to the 63 bytes PostgreSQL keeps.
fn application_name(schema: &str) -> String {
    let mut text = format!("factum claims {schema}");
    let mut end = text.len().min(63);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}
