//! Persistent subscriptions: consumer groups kept by the store's side. Several consumers
//! share one group on a stream or on `$all`; each message goes to one of them, is
//! acknowledged or nacked, is tried again when it is not acknowledged in time, and is parked
//! after its last retry. The groups, their checkpoints and their parked messages are records
//! in the event store, so they survive a restart and work on every backend.
//!
//! [`Groups`] holds every group of a store; [`GroupConnection`] is one consumer's link to a
//! group; [`PersistentConsumer`] runs an [`EventHandler`](crate::EventHandler) on one.

mod consumer;
mod group;
mod settings;

use std::collections::BTreeMap;
use std::sync::Arc;

use factum_core::{Direction, EventStore, ExpectedState, IntoStore, NewEvent, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use consumer::{PersistentConsumer, PersistentConsumerStats};
pub use group::MESSAGE_PARKED;
pub use settings::{
    ConsumerInfo, ConsumerStrategy, FilterSpec, GroupError, GroupInfo, GroupKey, GroupMessage,
    GroupSettings, GroupSource, NackAction, StartFrom,
};

use group::{Command, Definition, Group};

/// The stream holding the groups' definitions: one record per create, update and delete.
pub const GROUPS_STREAM: &str = "$persistentsubscription-groups";
/// The record of a group created.
pub const GROUP_CREATED: &str = "PersistentGroupCreated";
/// The record of a group's new settings.
pub const GROUP_UPDATED: &str = "PersistentGroupUpdated";
/// The record of a group deleted.
pub const GROUP_DELETED: &str = "PersistentGroupDeleted";
/// The longest group name.
pub const GROUP_NAME_CHARS_MAX: usize = 256;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct GroupRecord {
    source: String,
    group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filter: Option<FilterSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<GroupSettings>,
    #[serde(default)]
    start: u64,
    #[serde(default)]
    parked_from: u64,
}

struct Running {
    def: Definition,
    commands: Option<mpsc::UnboundedSender<Command>>,
    task: Option<JoinHandle<()>>,
    /// Why the group is not running here; it is tried again on the next request.
    not_running: Option<NotRunning>,
    /// Applied from the groups stream, not started yet.
    to_start: bool,
}

/// Why a group's task is not running in this process.
enum NotRunning {
    /// Another process sharing the store holds its claim.
    ServedElsewhere,
    /// Its claim or its state could not be read.
    Failed(String),
}

impl Running {
    fn to_start(def: Definition) -> Running {
        Running {
            def,
            commands: None,
            task: None,
            not_running: None,
            to_start: true,
        }
    }
}

#[derive(Default)]
struct Registry {
    /// The last revision of the groups stream applied.
    revision: Option<u64>,
    groups: BTreeMap<GroupKey, Running>,
}

struct Inner {
    store: Arc<dyn EventStore>,
    registry: Mutex<Registry>,
}

/// Every persistent subscription group of a store, each at work in its own task. Clones share
/// the groups. Open it once per process; in a process sharing a PostgreSQL store with others,
/// each group runs in the process that claimed it first (the others answer
/// [`GroupError::ServedElsewhere`] for it until that one stops). `factum serve` opens them
/// for its HTTP and gRPC consumers.
///
/// ```
/// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
/// use factum::{EventStore, ExpectedState, GroupKey, GroupSettings, GroupSource, Groups,
///              MemoryStore, NackAction, NewEvent, StreamName};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let placed = |n| NewEvent::json("OrderPlaced", &serde_json::json!({"n": n})).unwrap();
/// store.append(&StreamName::user("order-1").unwrap(), ExpectedState::Any,
///              vec![placed(0), placed(1)]).await.unwrap();
///
/// let groups = Groups::open(store.clone()).await.unwrap();
/// groups.create(GroupSource::stream("order-1").unwrap(), "billing", GroupSettings::default())
///     .await.unwrap();
/// let key = GroupKey::new("order-1", "billing");
/// // Each worker connects; the group shares the messages among them.
/// let mut worker = groups.connect(&key, "worker-1", 10).await.unwrap();
/// let first = worker.next().await.unwrap();
/// worker.ack(&[first.id]).await.unwrap();
/// let second = worker.next().await.unwrap();
/// worker.nack(&[second.id], NackAction::Park, "no billing address").await.unwrap();
/// assert_eq!(groups.info(&key).await.unwrap().parked, 1);
/// groups.close().await;
/// # });
/// ```
#[derive(Clone)]
pub struct Groups {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").finish_non_exhaustive()
    }
}

fn groups_stream() -> factum_core::StreamName {
    factum_core::StreamName::new(GROUPS_STREAM).expect("a valid stream name")
}

/// What a record of the groups stream changes.
enum DefinitionChange {
    Created(Definition),
    Updated(GroupKey, GroupSettings),
    Deleted(GroupKey),
}

/// Reads a record of the groups stream; `None` for one that does not parse (logged) or of
/// another type.
fn definition_change(
    event: &factum_core::RecordedEvent,
) -> Result<Option<DefinitionChange>, GroupError> {
    let Ok(record) = serde_json::from_slice::<GroupRecord>(&event.data) else {
        tracing::warn!(
            revision = event.revision,
            "a group record that does not parse"
        );
        return Ok(None);
    };
    let key = GroupKey::new(&record.source, &record.group);
    Ok(match event.event_type.as_str() {
        GROUP_CREATED => {
            let source = if record.source == "$all" {
                GroupSource::All(record.filter.clone().unwrap_or_default())
            } else {
                GroupSource::stream(&record.source)?
            };
            Some(DefinitionChange::Created(Definition {
                key,
                source,
                settings: record.settings.clone().unwrap_or_default(),
                start: record.start,
                parked_from: record.parked_from,
                incarnation: event.position,
            }))
        }
        GROUP_UPDATED => Some(DefinitionChange::Updated(
            key,
            record.settings.clone().unwrap_or_default(),
        )),
        GROUP_DELETED => Some(DefinitionChange::Deleted(key)),
        _ => None,
    })
}

/// The lowest position of `$all` that a persistent subscription group stored in `store` has
/// not settled yet (`None` when no group needs any): a scavenge bounded by it removes no
/// event a group still owes its consumers. Reads the groups' records and checkpoints only;
/// it starts no group.
pub(crate) async fn groups_scavenge_bound(
    store: &dyn EventStore,
) -> Result<Option<u64>, GroupError> {
    let mut defs: BTreeMap<GroupKey, Definition> = BTreeMap::new();
    crate::replay_stream(store, &groups_stream(), 0, |event| {
        match definition_change(event)? {
            Some(DefinitionChange::Created(def)) => {
                defs.insert(def.key.clone(), def);
            }
            Some(DefinitionChange::Updated(key, settings)) => {
                if let Some(def) = defs.get_mut(&key) {
                    def.settings = settings;
                }
            }
            Some(DefinitionChange::Deleted(key)) => {
                defs.remove(&key);
            }
            None => {}
        }
        Ok::<_, GroupError>(())
    })
    .await?;
    let mut lowest: Option<u64> = None;
    for def in defs.values() {
        let below = group::stored_below(store, def).await?;
        let position = match &def.source {
            GroupSource::All(_) => Some(below),
            GroupSource::Stream(source) => {
                match store
                    .read_stream(source, below, Direction::Forwards, 1)
                    .await
                {
                    Ok(first) => first.first().map(|e| e.position),
                    Err(StoreError::NotFound(_) | StoreError::StreamDeleted(_)) => None,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if let Some(position) = position {
            lowest = Some(lowest.map_or(position, |l| l.min(position)));
        }
    }
    Ok(lowest)
}

async fn ask<T>(
    key: &GroupKey,
    commands: &mpsc::UnboundedSender<Command>,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, GroupError> {
    let (reply, answer) = oneshot::channel();
    commands
        .send(command(reply))
        .map_err(|_| GroupError::Stopped(key.clone()))?;
    answer.await.map_err(|_| GroupError::Stopped(key.clone()))
}

fn check_name(group: &str) -> Result<(), GroupError> {
    if group.is_empty() {
        return Err(GroupError::Invalid("the group name is empty".into()));
    }
    if group.chars().count() > GROUP_NAME_CHARS_MAX {
        return Err(GroupError::Invalid(format!(
            "the group name is over {GROUP_NAME_CHARS_MAX} characters"
        )));
    }
    // The parked stream is `{source}::{group}-parked`: with no `::` in a group name and no
    // `:` at its start, the last `::` of that name tells source and group apart.
    if group.contains("::") || group.starts_with(':') || group.contains('\0') {
        return Err(GroupError::Invalid(
            "a group name may not contain '::' or NUL, nor start with ':'".into(),
        ));
    }
    Ok(())
}

impl Groups {
    /// Loads the groups stored in `store` and starts them.
    pub async fn open(store: impl IntoStore) -> Result<Groups, GroupError> {
        let groups = Groups {
            inner: Arc::new(Inner {
                store: store.into_store(),
                registry: Mutex::new(Registry::default()),
            }),
        };
        {
            let mut registry = groups.inner.registry.lock().await;
            groups.catch_up(&mut registry).await?;
        }
        Ok(groups)
    }

    /// The store the groups read.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.inner.store
    }

    /// Applies the records of the groups stream written since the last one applied (by this
    /// process or another sharing the store).
    async fn catch_up(&self, registry: &mut Registry) -> Result<(), GroupError> {
        let stream = groups_stream();
        loop {
            let from = registry.revision.map_or(0, |r| r + 1);
            let page = match self
                .inner
                .store
                .read_stream(&stream, from, Direction::Forwards, 512)
                .await
            {
                Ok(page) => page,
                Err(StoreError::NotFound(_)) => break,
                Err(e) => return Err(e.into()),
            };
            let Some(last) = page.last() else {
                break;
            };
            registry.revision = Some(last.revision);
            for event in page {
                match definition_change(&event)? {
                    Some(DefinitionChange::Created(def)) => {
                        if let Some(old) = registry.groups.remove(&def.key) {
                            stop(old).await;
                        }
                        registry
                            .groups
                            .insert(def.key.clone(), Running::to_start(def));
                    }
                    Some(DefinitionChange::Updated(key, settings)) => {
                        if let Some(old) = registry.groups.remove(&key) {
                            let mut def = old.def.clone();
                            stop(old).await;
                            def.settings = settings;
                            registry.groups.insert(key, Running::to_start(def));
                        }
                    }
                    Some(DefinitionChange::Deleted(key)) => {
                        if let Some(old) = registry.groups.remove(&key) {
                            stop(old).await;
                        }
                    }
                    None => {}
                }
            }
        }
        // Started once every record is applied: a group created and deleted since the last
        // catch-up never starts.
        for running in registry.groups.values_mut() {
            if running.to_start {
                *running = self.start(running.def.clone()).await;
            }
        }
        Ok(())
    }

    async fn start(&self, def: Definition) -> Running {
        let store = self.inner.store.clone();
        let not_running = |why: NotRunning| Running {
            def: def.clone(),
            commands: None,
            task: None,
            not_running: Some(why),
            to_start: false,
        };
        let claim = match store.claim(&def.claim_name()).await {
            Ok(Some(claim)) => claim,
            Ok(None) => return not_running(NotRunning::ServedElsewhere),
            Err(e) => return not_running(NotRunning::Failed(e.to_string())),
        };
        let group = match Group::open(store, def.clone(), claim).await {
            Ok(group) => group,
            Err(e) => return not_running(NotRunning::Failed(e.to_string())),
        };
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(group.run(receiver));
        Running {
            def,
            commands: Some(commands),
            task: Some(task),
            not_running: None,
            to_start: false,
        }
    }

    /// The command channel of a running group, starting it again if it was not running.
    async fn commands(&self, key: &GroupKey) -> Result<mpsc::UnboundedSender<Command>, GroupError> {
        let mut registry = self.inner.registry.lock().await;
        if !registry.groups.contains_key(key) {
            self.catch_up(&mut registry).await?;
        }
        let Some(running) = registry.groups.get(key) else {
            return Err(GroupError::NotFound(key.clone()));
        };
        if let Some(commands) = &running.commands
            && !commands.is_closed()
        {
            return Ok(commands.clone());
        }
        let def = running.def.clone();
        let restarted = self.start(def).await;
        let answer = match (&restarted.commands, &restarted.not_running) {
            (Some(commands), _) => Ok(commands.clone()),
            (None, Some(NotRunning::ServedElsewhere)) => {
                Err(GroupError::ServedElsewhere(key.clone()))
            }
            (None, Some(NotRunning::Failed(why))) => Err(GroupError::Invalid(format!(
                "group '{key}' cannot start: {why}"
            ))),
            (None, None) => Err(GroupError::Stopped(key.clone())),
        };
        registry.groups.insert(key.clone(), restarted);
        answer
    }

    /// Appends one record to the groups stream after the last one this process applied;
    /// when another process wrote in between, applies its records and checks again.
    async fn record(
        &self,
        registry: &mut Registry,
        event_type: &str,
        record: &GroupRecord,
    ) -> Result<(), GroupError> {
        let event = NewEvent::json(event_type, record)?;
        let expected = registry
            .revision
            .map_or(ExpectedState::NoStream, ExpectedState::Exact);
        self.inner
            .store
            .append(&groups_stream(), expected, vec![event])
            .await?;
        self.catch_up(registry).await
    }

    /// Creates a group. A group of that name on that source is [`GroupError::Exists`];
    /// invalid settings are [`GroupError::Invalid`]; either way nothing is written.
    pub async fn create(
        &self,
        source: GroupSource,
        group: &str,
        settings: GroupSettings,
    ) -> Result<(), GroupError> {
        check_name(group)?;
        settings.validate().map_err(GroupError::Invalid)?;
        if let GroupSource::All(filter) = &source {
            filter.matcher().map_err(GroupError::Invalid)?;
        }
        let key = GroupKey::new(source.name(), group);
        let mut registry = self.inner.registry.lock().await;
        self.catch_up(&mut registry).await?;
        if registry.groups.contains_key(&key) {
            return Err(GroupError::Exists(key));
        }
        let store = &self.inner.store;
        let start = match (&source, settings.start_from) {
            (_, StartFrom::Start) => 0,
            (_, StartFrom::At(at)) => at,
            (GroupSource::All(_), StartFrom::End) => store.head(),
            (GroupSource::Stream(stream), StartFrom::End) => store
                .stream_revision(stream)
                .await?
                .0
                .map_or(0, |last| last + 1),
        };
        let parked_from = match store.stream_revision(&key.parked_stream()?).await?.0 {
            Some(last) => last + 1,
            None => 0,
        };
        let record = GroupRecord {
            source: key.source.clone(),
            group: key.group.clone(),
            filter: match &source {
                GroupSource::All(filter) => Some(filter.clone()),
                GroupSource::Stream(_) => None,
            },
            settings: Some(settings),
            start,
            parked_from,
        };
        self.record(&mut registry, GROUP_CREATED, &record).await
    }

    /// Gives a group new settings (its start stays where it was created): it restarts from
    /// its checkpoint, and its consumers are disconnected and connect again.
    pub async fn update(&self, key: &GroupKey, settings: GroupSettings) -> Result<(), GroupError> {
        settings.validate().map_err(GroupError::Invalid)?;
        let mut registry = self.inner.registry.lock().await;
        self.catch_up(&mut registry).await?;
        let Some(running) = registry.groups.get(key) else {
            return Err(GroupError::NotFound(key.clone()));
        };
        let record = GroupRecord {
            source: key.source.clone(),
            group: key.group.clone(),
            filter: None,
            settings: Some(settings),
            start: running.def.start,
            parked_from: running.def.parked_from,
        };
        self.record(&mut registry, GROUP_UPDATED, &record).await
    }

    /// Deletes a group: its consumers are disconnected. Its parked stream stays readable; a
    /// group created again under the name starts with none of it.
    pub async fn delete(&self, key: &GroupKey) -> Result<(), GroupError> {
        let mut registry = self.inner.registry.lock().await;
        self.catch_up(&mut registry).await?;
        if !registry.groups.contains_key(key) {
            return Err(GroupError::NotFound(key.clone()));
        }
        let record = GroupRecord {
            source: key.source.clone(),
            group: key.group.clone(),
            filter: None,
            settings: None,
            start: 0,
            parked_from: 0,
        };
        self.record(&mut registry, GROUP_DELETED, &record).await
    }

    /// What a group reads: its stream, or `$all` and its filter (what its rights are checked
    /// on), from the definitions this process holds — no question to the group's task.
    pub async fn source(&self, key: &GroupKey) -> Result<GroupSource, GroupError> {
        let mut registry = self.inner.registry.lock().await;
        if !registry.groups.contains_key(key) {
            self.catch_up(&mut registry).await?;
        }
        registry
            .groups
            .get(key)
            .map(|running| running.def.source.clone())
            .ok_or_else(|| GroupError::NotFound(key.clone()))
    }

    /// The group as it is now.
    pub async fn info(&self, key: &GroupKey) -> Result<GroupInfo, GroupError> {
        let commands = self.commands(key).await?;
        ask(key, &commands, Command::Info).await
    }

    /// Every group, in order of source and name (`None` for the source: all of them).
    pub async fn list(&self, source: Option<&str>) -> Result<Vec<GroupInfo>, GroupError> {
        let keys: Vec<GroupKey> = {
            let mut registry = self.inner.registry.lock().await;
            self.catch_up(&mut registry).await?;
            registry
                .groups
                .keys()
                .filter(|k| source.is_none_or(|s| k.source == s))
                .cloned()
                .collect()
        };
        let mut infos = Vec::with_capacity(keys.len());
        for key in keys {
            match self.info(&key).await {
                Ok(info) => infos.push(info),
                Err(GroupError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(infos)
    }

    /// Connects a consumer, which may hold up to `capacity` messages unacknowledged.
    pub async fn connect(
        &self,
        key: &GroupKey,
        name: &str,
        capacity: usize,
    ) -> Result<GroupConnection, GroupError> {
        let commands = self.commands(key).await?;
        let connected = ask(key, &commands, |reply| Command::Connect {
            name: name.to_owned(),
            capacity,
            reply,
        })
        .await??;
        Ok(GroupConnection {
            key: key.clone(),
            id: connected.id,
            deliveries: connected.deliveries,
            commands,
        })
    }

    /// Acknowledges messages in flight, whichever consumer holds them. An id not in flight
    /// is [`GroupError::UnknownMessage`] and nothing is acknowledged.
    pub async fn ack(&self, key: &GroupKey, ids: &[Uuid]) -> Result<(), GroupError> {
        let commands = self.commands(key).await?;
        ask(key, &commands, |reply| Command::Ack {
            ids: ids.to_vec(),
            reply,
        })
        .await?
    }

    /// Nacks messages in flight with an action; as [`Groups::ack`] for unknown ids.
    /// [`NackAction::Stop`] gives them back (no consumer is disconnected here).
    pub async fn nack(
        &self,
        key: &GroupKey,
        ids: &[Uuid],
        action: NackAction,
        reason: &str,
    ) -> Result<(), GroupError> {
        let commands = self.commands(key).await?;
        ask(key, &commands, |reply| Command::Nack {
            from: None,
            ids: ids.to_vec(),
            action,
            reason: reason.to_owned(),
            reply,
        })
        .await?
    }

    /// Delivers the group's parked messages again (all, or the first `stop_at`), before new
    /// ones; returns how many. They count as replayed once each is settled again (parked
    /// again, too).
    pub async fn replay_parked(
        &self,
        key: &GroupKey,
        stop_at: Option<u64>,
    ) -> Result<u64, GroupError> {
        let commands = self.commands(key).await?;
        ask(key, &commands, |reply| Command::ReplayParked {
            stop_at,
            reply,
        })
        .await?
    }

    /// Stops every group (each stores its checkpoint) and starts them again from what is
    /// stored; consumers are disconnected.
    pub async fn restart(&self) -> Result<(), GroupError> {
        let mut registry = self.inner.registry.lock().await;
        let keys: Vec<GroupKey> = registry.groups.keys().cloned().collect();
        for key in keys {
            if let Some(old) = registry.groups.remove(&key) {
                let def = old.def.clone();
                stop(old).await;
                let running = self.start(def).await;
                registry.groups.insert(key, running);
            }
        }
        self.catch_up(&mut registry).await
    }

    /// Stops every group; each stores its checkpoint first.
    pub async fn close(&self) {
        let mut registry = self.inner.registry.lock().await;
        for (_, running) in std::mem::take(&mut registry.groups) {
            stop(running).await;
        }
    }
}

async fn stop(running: Running) {
    if let Some(commands) = running.commands {
        let _ = commands.send(Command::Stop);
    }
    if let Some(task) = running.task {
        let _ = task.await;
    }
}

/// One consumer's link to a group. Dropping it disconnects the consumer: what it holds
/// unacknowledged goes to the others (as a retry).
pub struct GroupConnection {
    key: GroupKey,
    id: u64,
    deliveries: mpsc::UnboundedReceiver<GroupMessage>,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for GroupConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConnection")
            .field("group", &self.key)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl GroupConnection {
    /// The group.
    pub fn key(&self) -> &GroupKey {
        &self.key
    }

    /// The connection's id in the group.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next message; `None` once the group stopped (updated, deleted, restarted, or
    /// closed): connect again.
    pub async fn next(&mut self) -> Option<GroupMessage> {
        self.deliveries.recv().await
    }

    /// A message that is here already, without waiting.
    pub fn try_next(&mut self) -> Option<GroupMessage> {
        self.deliveries.try_recv().ok()
    }

    /// Acknowledges messages: they are settled.
    pub async fn ack(&self, ids: &[Uuid]) -> Result<(), GroupError> {
        ask(&self.key, &self.commands, |reply| Command::Ack {
            ids: ids.to_vec(),
            reply,
        })
        .await?
    }

    /// Nacks messages with an action; [`NackAction::Stop`] also disconnects this consumer.
    pub async fn nack(
        &self,
        ids: &[Uuid],
        action: NackAction,
        reason: &str,
    ) -> Result<(), GroupError> {
        ask(&self.key, &self.commands, |reply| Command::Nack {
            from: Some(self.id),
            ids: ids.to_vec(),
            action,
            reason: reason.to_owned(),
            reply,
        })
        .await?
    }
}

impl Drop for GroupConnection {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Disconnect(self.id));
    }
}
