//! Claims: a name that one runner at a time may hold, so that a processor, relay or saga
//! manager started twice (two replicas of a service on one PostgreSQL store, or twice in one
//! process) runs once while the other copy waits to take over.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{EventStore, StoreError};

/// How often a runner that waits for a claim asks again.
pub const CLAIM_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// A name held by one runner at a time; see [`EventStore::claim`]. Dropping it releases the
/// name.
pub struct Claim {
    name: String,
    lost: watch::Receiver<bool>,
    _release: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("name", &self.name)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Claim {
    /// A claim on `name` for a backend: `lost` turns `true` (or its sender is dropped) when the
    /// backend can no longer vouch for it; dropping `release` releases the name.
    pub fn new(
        name: impl Into<String>,
        lost: watch::Receiver<bool>,
        release: impl Send + Sync + 'static,
    ) -> Self {
        Claim {
            name: name.into(),
            lost,
            _release: Box::new(release),
        }
    }

    /// The name claimed.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the claim may have passed to another runner (for PostgreSQL: the connection
    /// that holds it failed, or stopped answering). A runner stops working under it then.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.lost.has_changed().is_err()
    }

    /// Completes when the claim is lost; never for a claim that stays held.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the sender is gone: nobody vouches for the claim any more.
        let _ = lost.wait_for(|lost| *lost).await;
    }
}

/// Claims held in this process: the claims of a backend that only one process can open at a
/// time (the embedded engine, which locks its directory; the in-memory store).
#[derive(Clone, Default)]
pub struct LocalClaims {
    held: Arc<Mutex<HashSet<String>>>,
}

/// Releases a [`LocalClaims`] name when dropped; keeps the claim's `lost` sender alive.
struct LocalRelease {
    held: Arc<Mutex<HashSet<String>>>,
    name: String,
    _vouch: watch::Sender<bool>,
}

impl Drop for LocalRelease {
    fn drop(&mut self) {
        self.held.lock().remove(&self.name);
    }
}

impl LocalClaims {
    /// Claims `name` when no one in this process holds it.
    pub fn try_claim(&self, name: &str) -> Result<Option<Claim>, StoreError> {
        check_claim_name(name)?;
        if !self.held.lock().insert(name.to_owned()) {
            return Ok(None);
        }
        let (vouch, lost) = watch::channel(false);
        let release = LocalRelease {
            held: self.held.clone(),
            name: name.to_owned(),
            _vouch: vouch,
        };
        Ok(Some(Claim::new(name, lost, release)))
    }
}

/// Checks a claim's name: not empty, at most 1,024 bytes.
pub fn check_claim_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 1024 {
        return Err(StoreError::invalid(
            "a claim's name must be 1 to 1024 bytes long",
        ));
    }
    Ok(())
}

/// What one attempt to claim a name found.
enum Attempt {
    Claimed(Claim),
    /// Another runner holds it.
    Held,
    /// The database is away (restarting, say): ask again when it may be back.
    Away,
}

async fn attempt(store: &dyn EventStore, name: &str) -> Result<Attempt, StoreError> {
    match store.claim(name).await {
        Ok(Some(claim)) => Ok(Attempt::Claimed(claim)),
        Ok(None) => Ok(Attempt::Held),
        Err(StoreError::Unavailable(_)) => Ok(Attempt::Away),
        Err(e) => Err(e),
    }
}

/// Asks again every [`CLAIM_RETRY_INTERVAL`] after `first` until the name is claimed; `waiting` is
/// called once, when an attempt (`first` included) first finds the name held.
async fn keep_claiming(
    store: &dyn EventStore,
    name: &str,
    first: Attempt,
    waiting: impl FnOnce(),
) -> Result<Claim, StoreError> {
    let mut waiting = Some(waiting);
    let mut found = first;
    loop {
        match found {
            Attempt::Claimed(claim) => return Ok(claim),
            Attempt::Held => {
                if let Some(waiting) = waiting.take() {
                    waiting();
                }
            }
            Attempt::Away => {}
        }
        tokio::time::sleep(CLAIM_RETRY_INTERVAL).await;
        found = attempt(store, name).await?;
    }
}

/// Claims `name`, asking again every [`CLAIM_RETRY_INTERVAL`] while another runner holds it (or the
/// database is unavailable); `waiting` is called once, when an attempt first finds the name
/// held. Cancel the future (drop it) to stop waiting.
pub async fn claim_when_free(
    store: &dyn EventStore,
    name: &str,
    waiting: impl FnOnce(),
) -> Result<Claim, StoreError> {
    let first = attempt(store, name).await?;
    keep_claiming(store, name, first, waiting).await
}

/// [`claim_when_free`] unless `shutdown` completes first: then `None`. A free name is taken
/// even when `shutdown` has already completed, so that a runner started with a stop that is
/// already due still does what it does at start (a processor replays its dead letters).
pub async fn claim_unless_stopped<S: Future<Output = ()> + ?Sized>(
    store: &dyn EventStore,
    name: &str,
    shutdown: Pin<&mut S>,
    waiting: impl FnOnce(),
) -> Result<Option<Claim>, StoreError> {
    let first = match attempt(store, name).await? {
        Attempt::Claimed(claim) => return Ok(Some(claim)),
        found => found,
    };
    tokio::select! {
        () = shutdown => Ok(None),
        claim = keep_claiming(store, name, first, waiting) => claim.map(Some),
    }
}

/// Completes when `shutdown` does (and sets `stopped`) or when `claim` is lost: what a runner
/// works until.
pub async fn until_stopped_or_lost<S: Future<Output = ()> + ?Sized>(
    shutdown: Pin<&mut S>,
    claim: &Claim,
    stopped: &mut bool,
) {
    tokio::select! {
        () = shutdown => *stopped = true,
        () = claim.lost() => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_local_name_is_held_once_and_free_again_when_dropped() {
        let claims = LocalClaims::default();
        let first = claims.try_claim("relay").unwrap().unwrap();
        assert!(claims.try_claim("relay").unwrap().is_none());
        assert!(claims.try_claim("other").unwrap().is_some());
        assert!(!first.is_lost());
        drop(first);
        assert!(claims.try_claim("relay").unwrap().is_some());
        assert!(claims.try_claim("").is_err());
    }

    #[tokio::test]
    async fn a_stop_already_due_still_takes_a_free_name_but_does_not_wait_for_a_held_one() {
        let store = crate::MemoryStore::new();
        let due = || Box::pin(std::future::ready(()));
        let first = claim_unless_stopped(&store, "relay", due().as_mut(), || {}).await;
        let first = first.unwrap().expect("a free name is taken");
        let second = claim_unless_stopped(&store, "relay", due().as_mut(), || {}).await;
        assert!(second.unwrap().is_none());
        drop(first);
        let again = claim_unless_stopped(&store, "relay", due().as_mut(), || {}).await;
        assert!(again.unwrap().is_some());
    }
}
