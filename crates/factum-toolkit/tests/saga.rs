//! Sagas: a transfer between accounts, with a refund when the credit is refused or does not
//! come before the deadline; exactly once across restarts, on the engine.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use factum_core::{
    Direction, EventStore, ExpectedState, MemoryStore, NewEvent, RecordedEvent, StreamName,
};
use factum_engine::{Engine, EngineOptions};
use factum_toolkit::{BusError, CommandBus};
use factum_toolkit::{CommandContext, Decider, Repository, ToAggregate};
use factum_toolkit::{Saga, SagaManager, SagaStatus, SagaStep};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

#[derive(Clone, Debug, Serialize, Deserialize)]
enum AccountEvent {
    Opened { cents: u64 },
    Closed,
    Debited { transfer: String, cents: u64 },
    Credited { transfer: String, cents: u64 },
    Refunded { transfer: String, cents: u64 },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum AccountCommand {
    Open { cents: u64 },
    Close,
    Debit { transfer: String, cents: u64 },
    Credit { transfer: String, cents: u64 },
    Refund { transfer: String, cents: u64 },
}

#[derive(Debug, thiserror::Error)]
enum AccountError {
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("the account is closed")]
    Closed,
}

#[derive(Default)]
struct Balance {
    cents: u64,
    closed: bool,
}

struct Accounts;

impl Decider for Accounts {
    type State = Balance;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    const CATEGORY: &'static str = "account";

    fn initial_state(&self) -> Balance {
        Balance::default()
    }

    fn decide(
        &self,
        state: &Balance,
        command: &AccountCommand,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand as C;
        use AccountEvent as E;
        Ok(vec![match command.clone() {
            C::Open { cents } => E::Opened { cents },
            C::Close => E::Closed,
            C::Debit { .. } | C::Credit { .. } if state.closed => return Err(AccountError::Closed),
            C::Debit { cents, .. } if cents > state.cents => {
                return Err(AccountError::InsufficientFunds);
            }
            C::Debit { transfer, cents } => E::Debited { transfer, cents },
            C::Credit { transfer, cents } => E::Credited { transfer, cents },
            C::Refund { transfer, cents } => E::Refunded { transfer, cents },
        }])
    }

    fn evolve(&self, mut state: Balance, event: &AccountEvent) -> Balance {
        match event {
            AccountEvent::Opened { cents } => state.cents = *cents,
            AccountEvent::Closed => state.closed = true,
            AccountEvent::Debited { cents, .. } => state.cents -= cents,
            AccountEvent::Credited { cents, .. } | AccountEvent::Refunded { cents, .. } => {
                state.cents += cents;
            }
        }
        state
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
enum Stage {
    #[default]
    New,
    Debiting,
    Crediting,
    Refunding,
    Completed,
    Failed,
    Refunded,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Transfer {
    from: String,
    to: String,
    cents: u64,
    stage: Stage,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ToAccount {
    account: String,
    command: AccountCommand,
}

/// Moves money from one account to another: debit, then credit; a refused credit, or one
/// that has not come when the deadline does, is compensated by refunding the debit.
struct TransferSaga;

impl Saga for TransferSaga {
    const NAME: &'static str = "transfer";
    type State = Transfer;
    type Command = ToAccount;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        let data: serde_json::Value = serde_json::from_slice(&event.data).ok()?;
        match event.stream.as_str().strip_prefix("transfer-") {
            Some(id) => Some(id.to_owned()),
            None => data.get("transfer")?.as_str().map(str::to_owned),
        }
    }

    fn on_event(
        &self,
        t: &Transfer,
        event: &RecordedEvent,
    ) -> Option<SagaStep<Transfer, ToAccount>> {
        let data: serde_json::Value = serde_json::from_slice(&event.data).ok()?;
        let id = self.correlate(event)?;
        let to = |account: &str, command| ToAccount {
            account: account.to_owned(),
            command,
        };
        match event.event_type.as_str() {
            "TransferRequested" => {
                let t = Transfer {
                    from: data["from"].as_str()?.to_owned(),
                    to: data["to"].as_str()?.to_owned(),
                    cents: data["cents"].as_u64()?,
                    stage: Stage::Debiting,
                };
                let debit = AccountCommand::Debit {
                    transfer: id,
                    cents: t.cents,
                };
                let expire = Duration::from_millis(data["expire_ms"].as_u64()?);
                Some(
                    SagaStep::to(t.clone())
                        .send(to(&t.from, debit))
                        .schedule("expire", expire),
                )
            }
            "Debited" if t.stage == Stage::Debiting => {
                let credit = AccountCommand::Credit {
                    transfer: id,
                    cents: t.cents,
                };
                let next = Transfer {
                    stage: Stage::Crediting,
                    ..t.clone()
                };
                Some(SagaStep::to(next).send(to(&t.to, credit)))
            }
            "Credited" if t.stage == Stage::Crediting => {
                let next = Transfer {
                    stage: Stage::Completed,
                    ..t.clone()
                };
                Some(SagaStep::to(next).cancel("expire").done())
            }
            "Refunded" => {
                let next = Transfer {
                    stage: Stage::Refunded,
                    ..t.clone()
                };
                Some(SagaStep::to(next).done())
            }
            _ => None,
        }
    }

    fn on_rejected(
        &self,
        t: &Transfer,
        command: &ToAccount,
        _: &str,
    ) -> Option<SagaStep<Transfer, ToAccount>> {
        match &command.command {
            AccountCommand::Debit { .. } => Some(
                SagaStep::to(Transfer {
                    stage: Stage::Failed,
                    ..t.clone()
                })
                .done(),
            ),
            AccountCommand::Credit { transfer, cents } => Some(self.refund(t, transfer, *cents)),
            _ => None,
        }
    }

    fn on_deadline(
        &self,
        t: &Transfer,
        _: &str,
        id: &str,
    ) -> Option<SagaStep<Transfer, ToAccount>> {
        match t.stage {
            Stage::Crediting => Some(self.refund(t, id, t.cents)),
            _ => None,
        }
    }
}

impl TransferSaga {
    fn refund(&self, t: &Transfer, transfer: &str, cents: u64) -> SagaStep<Transfer, ToAccount> {
        let refund = AccountCommand::Refund {
            transfer: transfer.to_owned(),
            cents,
        };
        SagaStep::to(Transfer {
            stage: Stage::Refunding,
            ..t.clone()
        })
        .cancel("expire")
        .send(ToAccount {
            account: t.from.clone(),
            command: refund,
        })
    }
}

fn bus(store: Arc<dyn EventStore>) -> CommandBus {
    let accounts = Arc::new(Repository::new(store, Accounts));
    CommandBus::builder()
        .handle::<ToAggregate<Accounts>, _>(accounts.handler())
        .build()
        .unwrap()
}

/// The saga manager over `store`. Credits to accounts called `offline-…` go to a service that
/// never answers (they are sent and nothing happens); the first `failing` sends fail as if the
/// bus could not reach the store.
fn manager(store: Arc<dyn EventStore>, failing: Arc<AtomicU32>) -> SagaManager<TransferSaga> {
    let bus = bus(store.clone());
    SagaManager::new(TransferSaga, store, move |command: ToAccount, context| {
        let bus = bus.clone();
        let failing = failing.clone();
        async move {
            if failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(BusError::Failed("the store is away".into()));
            }
            if command.account.starts_with("offline-")
                && matches!(command.command, AccountCommand::Credit { .. })
            {
                return Ok(());
            }
            bus.send(
                ToAggregate::<Accounts>::new(command.account, command.command),
                context,
            )
            .await
            .map(|_| ())
        }
    })
}

struct Running {
    status: watch::Receiver<SagaStatus>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn spawn(manager: SagaManager<TransferSaga>) -> (Running, Arc<SagaManager<TransferSaga>>) {
    let manager = Arc::new(manager);
    let status = manager.status();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = manager.clone();
    let task = tokio::spawn(async move {
        running
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (Running { status, stop, task }, manager)
}

impl Running {
    async fn wait_for(&mut self, what: &str, done: impl Fn(&SagaStatus) -> bool) {
        let reached =
            tokio::time::timeout(Duration::from_secs(20), self.status.wait_for(|s| done(s)))
                .await
                .is_ok();
        assert!(reached, "{what}: {:?}", *self.status.borrow());
    }

    async fn stop(self) -> SagaStatus {
        let _ = self.stop.send(());
        self.task.await.unwrap();
        self.status.borrow().clone()
    }
}

async fn open(store: &Arc<dyn EventStore>, account: &str, cents: u64) {
    let accounts = Repository::new(store.clone(), Accounts);
    accounts
        .execute(
            account,
            AccountCommand::Open { cents },
            &CommandContext::new(),
        )
        .await
        .unwrap();
}

async fn request(
    store: &Arc<dyn EventStore>,
    id: &str,
    from: &str,
    to: &str,
    cents: u64,
    expire_ms: u64,
) {
    let event = NewEvent::json(
        "TransferRequested",
        &serde_json::json!({ "from": from, "to": to, "cents": cents, "expire_ms": expire_ms }),
    )
    .unwrap();
    let stream = StreamName::user(format!("transfer-{id}")).unwrap();
    store
        .append(&stream, ExpectedState::NoStream, vec![event])
        .await
        .unwrap();
}

/// Opens accounts `a{n}` with 100 cents and `b{n}` with none, for each `n` below `count`.
async fn open_pairs(store: &Arc<dyn EventStore>, count: usize) {
    for n in 0..count {
        open(store, &format!("a{n}"), 100).await;
        open(store, &format!("b{n}"), 0).await;
    }
}

/// Requests transfers `t{n}` of 10 cents from `a{n}` to `b{n}`, for each `n` below `count`.
async fn request_pairs(store: &Arc<dyn EventStore>, count: usize) {
    for n in 0..count {
        let (t, a, b) = (format!("t{n}"), format!("a{n}"), format!("b{n}"));
        request(store, &t, &a, &b, 10, 60_000).await;
    }
}

async fn balance(store: &Arc<dyn EventStore>, account: &str) -> u64 {
    let accounts = Repository::new(store.clone(), Accounts);
    accounts.load(account).await.unwrap().state.cents
}

/// The event types of an account's stream.
async fn history(store: &Arc<dyn EventStore>, account: &str) -> Vec<String> {
    let stream = StreamName::user(format!("account-{account}")).unwrap();
    store
        .read_stream(&stream, 0, Direction::Forwards, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

#[tokio::test]
async fn a_transfer_debits_then_credits_and_its_deadline_is_cancelled() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    open(&store, "ann", 100).await;
    open(&store, "bob", 0).await;
    let (mut running, manager) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    request(&store, "t1", "ann", "bob", 30, 300).await;
    running
        .wait_for("debit and credit sent", |s| {
            s.commands_sent == 2 && s.steps == 3
        })
        .await;
    // Past the deadline: it was cancelled, so it does not fire.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = running.stop().await;
    assert_eq!(
        (status.deadlines_fired, status.deadlines_pending),
        (0, 0),
        "{status:?}"
    );
    assert_eq!(
        (balance(&store, "ann").await, balance(&store, "bob").await),
        (70, 30)
    );
    let state = manager.state("t1").await.unwrap().unwrap();
    assert_eq!(state.stage, Stage::Completed);
    assert!(manager.state("t9").await.unwrap().is_none());

    // The credit carries the transfer's correlation and is caused by the saga's step.
    let stream = StreamName::user("account-bob").unwrap();
    let credit = store
        .read_stream(&stream, 1, Direction::Forwards, 1)
        .await
        .unwrap()
        .remove(0);
    let requested = store
        .read_stream(
            &StreamName::user("transfer-t1").unwrap(),
            0,
            Direction::Forwards,
            1,
        )
        .await
        .unwrap()
        .remove(0);
    let metadata = credit.metadata_json();
    assert_eq!(metadata["$correlationId"], requested.id.to_string());
    assert_ne!(metadata["$causationId"], requested.id.to_string());
}

#[tokio::test]
async fn a_refused_credit_is_compensated_and_a_refused_debit_ends_the_transfer() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    open(&store, "ann", 100).await;
    open(&store, "closed", 0).await;
    Repository::new(store.clone(), Accounts)
        .execute("closed", AccountCommand::Close, &CommandContext::new())
        .await
        .unwrap();
    let (mut running, manager) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    request(&store, "t2", "ann", "closed", 40, 5_000).await;
    running
        .wait_for("credit refused and the debit refunded", |s| {
            s.commands_rejected == 1 && s.commands_sent == 2 && s.steps == 4
        })
        .await;
    assert_eq!(
        manager.state("t2").await.unwrap().unwrap().stage,
        Stage::Refunded
    );
    assert_eq!(balance(&store, "ann").await, 100);
    assert_eq!(
        history(&store, "ann").await,
        ["Opened", "Debited", "Refunded"]
    );
    assert_eq!(history(&store, "closed").await, ["Opened", "Closed"]);

    // Too little money: the debit is refused; nothing to compensate.
    request(&store, "t3", "ann", "closed", 1_000, 5_000).await;
    running
        .wait_for("debit refused", |s| s.commands_rejected == 2)
        .await;
    let status = running.stop().await;
    assert_eq!(status.deadlines_pending, 0, "{status:?}");
    assert_eq!(
        manager.state("t3").await.unwrap().unwrap().stage,
        Stage::Failed
    );
    assert_eq!(balance(&store, "ann").await, 100);
}

#[tokio::test]
async fn deadlines_that_passed_while_the_saga_was_down_fire_after_the_restart() {
    const TRANSFERS: u64 = 6;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    for n in 0..TRANSFERS {
        open(&store, &format!("ann{n}"), 100).await;
    }
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    for n in 0..TRANSFERS {
        request(
            &store,
            &format!("t{n}"),
            &format!("ann{n}"),
            "offline-bob",
            25,
            2_000,
        )
        .await;
    }
    // Well before the deadlines (2 s), however loaded the machine.
    running
        .wait_for("debits and credits sent", |s| {
            s.commands_sent == 2 * TRANSFERS
        })
        .await;
    let status = running.stop().await;
    assert_eq!(status.deadlines_pending, TRANSFERS as usize, "{status:?}");
    assert_eq!(balance(&store, "ann0").await, 75);
    drop(store);

    // All of them are due when the manager starts again: they fire together, each once.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let store: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    let (mut running, manager) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    running
        .wait_for("the deadlines fired and the refunds were sent", |s| {
            s.deadlines_fired == TRANSFERS && s.commands_sent == TRANSFERS
        })
        .await;
    running
        .wait_for("the refunds taken into account", |s| {
            s.steps == 2 * TRANSFERS
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = running.stop().await;
    assert_eq!(status.deadlines_fired, TRANSFERS, "{status:?}");
    assert_eq!(status.deadlines_pending, 0, "{status:?}");
    for n in 0..TRANSFERS {
        assert_eq!(balance(&store, &format!("ann{n}")).await, 100);
        assert_eq!(
            manager
                .state(&format!("t{n}"))
                .await
                .unwrap()
                .unwrap()
                .stage,
            Stage::Refunded
        );
    }
}

#[tokio::test]
async fn each_event_is_taken_once_and_commands_stored_but_not_sent_are_sent_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    for n in 0..5 {
        open(&store, &format!("a{n}"), 100).await;
        open(&store, &format!("b{n}"), 0).await;
    }
    // The bus is away: the first debit is stored with its step but cannot be sent, and the
    // manager stops while it is still trying.
    let failing = Arc::new(AtomicU32::new(u32::MAX));
    let (mut running, _) = spawn(manager(store.clone(), failing.clone()));
    request(&store, "t5", "a0", "b0", 10, 60_000).await;
    running
        .wait_for("the send failed", |s| s.failures >= 1)
        .await;
    let status = running.stop().await;
    assert_eq!((status.steps, status.commands_sent), (1, 0), "{status:?}");
    drop(store);

    let store: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    for n in 1..5 {
        request(
            &store,
            &format!("t{}", 5 + n),
            &format!("a{n}"),
            &format!("b{n}"),
            10,
            60_000,
        )
        .await;
    }
    // This time the first two sends fail and are tried again.
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(2))));
    running
        .wait_for("every transfer done", |s| {
            s.commands_sent == 10 && s.steps == 14
        })
        .await;
    running.stop().await;
    assert_taken_once(&store, (0..5).map(|n| (format!("t{}", 5 + n), n))).await;
}

/// The types of the records in the stream of transfer `transfer`'s saga instance (none when
/// it has no stream yet).
async fn records_of(store: &Arc<dyn EventStore>, transfer: &str) -> Vec<String> {
    let stream = SagaManager::<TransferSaga>::instance_stream(transfer).unwrap();
    match store
        .read_stream(&stream, 0, Direction::Forwards, 100)
        .await
    {
        Ok(events) => events.into_iter().map(|e| e.event_type).collect(),
        Err(factum_core::StoreError::NotFound(_)) => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

/// Runs the manager again over the same log and finds nothing to take; each transfer
/// (`(id, n)`: from `a{n}` to `b{n}`) debited and credited once, its instance three steps with
/// each command recorded as sent once.
async fn assert_taken_once(
    store: &Arc<dyn EventStore>,
    transfers: impl IntoIterator<Item = (String, usize)>,
) {
    let (running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = running.stop().await;
    assert_eq!((again.steps, again.commands_sent), (0, 0), "{again:?}");
    for (transfer, n) in transfers {
        assert_eq!(
            history(store, &format!("a{n}")).await,
            ["Opened", "Debited"]
        );
        assert_eq!(
            history(store, &format!("b{n}")).await,
            ["Opened", "Credited"]
        );
        assert_eq!(
            records_of(store, &transfer).await,
            [
                "SagaStepped",
                "SagaCommandSent",
                "SagaStepped",
                "SagaCommandSent",
                "SagaStepped"
            ],
            "transfer {transfer}"
        );
    }
}

#[tokio::test]
async fn a_batch_cut_short_by_a_stop_is_not_taken_twice_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    const TRANSFERS: usize = 8;
    open_pairs(&store, TRANSFERS).await;
    let first_request = store.head();
    request_pairs(&store, TRANSFERS).await;
    // The requests arrive together and are taken as one batch, all instances at once. The bus
    // is away: every first step is stored, no debit can be sent, and the manager stops before
    // the batch is done, so its checkpoint is not saved.
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(u32::MAX))));
    running
        .wait_for("every first step stored, a send failed", |s| {
            s.steps == TRANSFERS as u64 && s.failures >= 1
        })
        .await;
    let status = running.stop().await;
    assert_eq!(status.commands_sent, 0, "{status:?}");
    let checkpoint = store
        .read_checkpoint(&SagaManager::<TransferSaga>::checkpoint_name())
        .await
        .unwrap();
    assert!(
        checkpoint.is_none_or(|c| c < first_request),
        "the batch's checkpoint was saved: {checkpoint:?}"
    );

    // The restart reads the requests again: each instance has taken its own already. The
    // debits stored but not sent go out, and the transfers finish.
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    running
        .wait_for("every transfer done", |s| {
            s.commands_sent == 2 * TRANSFERS as u64 && s.steps == 2 * TRANSFERS as u64
        })
        .await;
    running.stop().await;
    assert_taken_once(&store, (0..TRANSFERS).map(|n| (format!("t{n}"), n))).await;
}

#[tokio::test]
async fn a_start_reads_the_instances_its_index_names_and_those_written_since() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> =
        Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    open_pairs(&store, 10).await;
    // Ten transfers finish; three wait for a credit that never comes, until a deadline.
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    request_pairs(&store, 10).await;
    for n in 0..3 {
        request(
            &store,
            &format!("w{n}"),
            &format!("a{n}"),
            "offline-bob",
            25,
            60_000,
        )
        .await;
    }
    running
        .wait_for("every transfer done or waiting", |s| {
            s.steps == 36 && s.commands_sent == 26
        })
        .await;
    // A clean stop writes the index.
    let status = running.stop().await;
    assert_eq!(status.deadlines_pending, 3, "{status:?}");
    let index = SagaManager::<TransferSaga>::index_stream().unwrap();
    assert_eq!(
        store
            .read_stream(&index, 0, Direction::Forwards, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // The next start reads only the three waiting instances.
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    running
        .wait_for("the deadlines known", |s| s.deadlines_pending == 3)
        .await;
    let status = running.stop().await;
    assert_eq!(status.loaded_at_start, 3, "{status:?}");

    // A stop in the middle of work: the index it writes is as of before that work, and the
    // instance written since is found in `$all`; its command stored but not sent goes out.
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(u32::MAX))));
    request(&store, "t10", "a3", "b3", 10, 60_000).await;
    running
        .wait_for("the first step stored, its send failing", |s| {
            s.steps == 1 && s.failures >= 1
        })
        .await;
    running.stop().await;
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    running
        .wait_for("the transfer done", |s| {
            s.commands_sent == 2 && s.steps == 2
        })
        .await;
    let status = running.stop().await;
    assert_eq!(status.loaded_at_start, 4, "{status:?}");
    assert_eq!(status.deadlines_pending, 3, "{status:?}");
    assert_eq!(balance(&store, "b3").await, 20);

    // An index this code cannot read: every instance is read.
    let unknown = NewEvent::json("SagaIndexed", &serde_json::json!({ "version": 99 })).unwrap();
    store
        .append(&index, ExpectedState::Any, vec![unknown])
        .await
        .unwrap();
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    running
        .wait_for("the deadlines known", |s| s.deadlines_pending == 3)
        .await;
    let status = running.stop().await;
    assert_eq!(status.loaded_at_start, 14, "{status:?}");
}

#[tokio::test]
async fn stops_at_random_moments_take_each_event_once() {
    use rand::{Rng, SeedableRng};
    const TRANSFERS: usize = 12;
    for seed in 0..6u64 {
        let mut random = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> =
            Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
        open_pairs(&store, TRANSFERS).await;
        request_pairs(&store, TRANSFERS).await;
        // Managers that the bus sometimes fails, each stopped after a random moment: in the
        // middle of a batch, of a send, of writing the index, or between them.
        for _ in 0..8 {
            let failing = Arc::new(AtomicU32::new(random.random_range(0..3)));
            let (running, _) = spawn(manager(store.clone(), failing));
            tokio::time::sleep(Duration::from_millis(random.random_range(0..40))).await;
            running.stop().await;
        }
        // The last one finishes the work: every instance takes its last step.
        let (running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
        let mut done = false;
        for _ in 0..400 {
            let mut records = 0;
            for n in 0..TRANSFERS {
                records += records_of(&store, &format!("t{n}")).await.len();
            }
            if records >= 5 * TRANSFERS {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(done, "seed {seed}: not every transfer finished");
        running.stop().await;
        assert_taken_once(&store, (0..TRANSFERS).map(|n| (format!("t{n}"), n))).await;
    }
}

#[tokio::test]
async fn a_stored_step_that_no_longer_decodes_stops_the_manager_with_a_typed_error() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let stream = SagaManager::<TransferSaga>::instance_stream("broken").unwrap();
    let bad = NewEvent::json("SagaStepped", &serde_json::json!({ "cause": 7 })).unwrap();
    store
        .append(&stream, ExpectedState::NoStream, vec![bad])
        .await
        .unwrap();
    let head = store.head();
    let manager = manager(store.clone(), Arc::new(AtomicU32::new(0)));
    let error = manager.run(std::future::pending()).await.unwrap_err();
    assert!(
        matches!(
            &error,
            factum_toolkit::SagaError::Decode {
                saga: "transfer",
                ..
            }
        ),
        "{error}"
    );
    assert!(manager.state("broken").await.is_err());
    assert_eq!(store.head(), head, "nothing written");
}

/// Requests transfers `t{n}` of 10 cents from `a{n}` to `b{n}`, for each `n` in `range`.
async fn request_range(store: &Arc<dyn EventStore>, range: std::ops::Range<usize>) {
    for n in range {
        let (t, a, b) = (format!("t{n}"), format!("a{n}"), format!("b{n}"));
        request(store, &t, &a, &b, 10, 60_000).await;
    }
}

/// Two replicas of a service each run the saga's manager: one works, the other waits, and
/// takes over when the first stops.
#[tokio::test]
async fn a_second_manager_waits_while_the_first_works_and_takes_over_when_it_stops() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    open_pairs(&store, 12).await;
    let quiet = || Arc::new(AtomicU32::new(0));
    let (mut first, _) = spawn(manager(store.clone(), quiet()));
    request_range(&store, 0..4).await;
    first.wait_for("the first works", |s| s.steps == 12).await;

    let (mut second, _) = spawn(manager(store.clone(), quiet()));
    second.wait_for("the second waits", |s| s.standby).await;
    request_range(&store, 4..8).await;
    first
        .wait_for("the first takes them", |s| s.steps == 24)
        .await;
    let waiting = second.status.borrow().clone();
    assert_eq!(
        (waiting.steps, waiting.commands_sent),
        (0, 0),
        "{waiting:?}"
    );
    assert!(!first.status.borrow().standby);

    first.stop().await;
    second
        .wait_for("the second takes over", |s| !s.standby)
        .await;
    request_range(&store, 8..12).await;
    second
        .wait_for("the second takes them", |s| s.steps == 12)
        .await;
    second.stop().await;
    assert_taken_once(&store, (0..12).map(|n| (format!("t{n}"), n))).await;
}

/// PostgreSQL for the test below, or `None` (with the reason printed) where it is not
/// reachable outside CI; under `CI=true` it must be.
async fn postgres_admin() -> Option<tokio_postgres::Client> {
    let url = std::env::var("FACTUM_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    match factum_pgconnect::PgConnect::parse(&url)
        .unwrap()
        .connect()
        .await
    {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            Some(client)
        }
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping: PostgreSQL at {url} is not reachable ({e})");
            None
        }
        Err(e) => panic!("PostgreSQL at {url} is needed under CI=true: {e}"),
    }
}

/// Two replicas of a service share a PostgreSQL store, each with the saga's manager. One
/// works; when the database ends its claim's connection, it stops working and one of the two
/// takes the saga's name again; every transfer is taken once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_lost_claim_passes_the_saga_on_and_nothing_is_taken_twice() {
    let Some(admin) = postgres_admin().await else {
        return;
    };
    let url = std::env::var("FACTUM_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into());
    let schema = format!("saga_claims_{}", std::process::id());
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    let connect = || {
        let options = factum_postgres::PgOptions {
            schema: schema.clone(),
            readers: 2,
            ..Default::default()
        };
        factum_postgres::PgStore::connect(&url, options)
    };
    // Two processes, as far as the database can tell: each store has its own connections.
    let one: Arc<dyn EventStore> = Arc::new(connect().await.unwrap());
    let two: Arc<dyn EventStore> = Arc::new(connect().await.unwrap());
    open_pairs(&one, 8).await;
    let quiet = || Arc::new(AtomicU32::new(0));
    let (mut first, _) = spawn(manager(one.clone(), quiet()));
    request_range(&one, 0..4).await;
    first.wait_for("the first works", |s| s.steps == 12).await;
    let (mut second, _) = spawn(manager(two.clone(), quiet()));
    second.wait_for("the second waits", |s| s.standby).await;

    let terminated = admin
        .query(
            &format!(
                "SELECT pg_terminate_backend(pid) FROM ({}) holder",
                factum_postgres::PG_CLAIM_HOLDER_SQL
            ),
            &[&format!("{schema}.saga-transfer")],
        )
        .await
        .unwrap();
    assert_eq!(terminated.len(), 1, "one connection holds the saga's claim");
    first
        .wait_for("the first learns that its claim is lost", |s| {
            s.claims_lost == 1
        })
        .await;
    // One of the two holds the name again; the other waits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let standby = (
            first.status.borrow().standby,
            second.status.borrow().standby,
        );
        if standby.0 != standby.1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{standby:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    request_range(&two, 4..8).await;
    let steps = |running: &Running| running.status.borrow().steps;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while steps(&first) + steps(&second) < 24 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.stop().await;
    second.stop().await;
    assert_taken_once(&one, (0..8).map(|n| (format!("t{n}"), n))).await;
    drop((one, two));
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
}

/// A store where another manager seems to race this one: the first time this one appends a
/// record of type `kind` to an instance stream, the same record (with an id of its own, as the
/// other manager would write it) lands just before it.
fn raced_once(kind: &'static str) -> common::Interfering {
    common::Interfering::new(move |stream, events, made| {
        let ours = stream.as_str().starts_with("$saga-transfer-")
            && events.iter().any(|e| e.event_type == kind);
        (made == 0 && ours).then(|| {
            let copy = |e: &NewEvent| NewEvent {
                id: uuid::Uuid::now_v7(),
                ..e.clone()
            };
            events.iter().map(copy).collect()
        })
    })
}

/// Runs one transfer through a store raced once on `kind` (see [`raced_once`]) until this
/// manager has stored `steps` steps; checks that it sent `sent` commands, failed never, and
/// that the transfer was taken once.
async fn race_once(kind: &'static str, steps: u64, sent: u64) {
    let raced = Arc::new(raced_once(kind));
    let store: Arc<dyn EventStore> = raced.clone();
    open_pairs(&store, 1).await;
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    request_range(&store, 0..1).await;
    running
        .wait_for("the transfer completes", |s| s.steps == steps)
        .await;
    let status = running.stop().await;
    assert_eq!(raced.foreign_writes.load(Ordering::SeqCst), 1);
    assert_eq!(
        (status.commands_sent, status.failures),
        (sent, 0),
        "{status:?}"
    );
    assert_taken_once(&store, [("t0".to_owned(), 0)]).await;
}

/// An instance append that meets a revision it did not expect (another manager wrote the same
/// step, or the same record of a sent command) reads the instance again and finds the work
/// done: nothing is stored twice, and the manager goes on.
#[tokio::test]
async fn an_instance_written_by_another_manager_in_between_is_read_again_and_not_written_twice() {
    // The other manager stores the first step; this one's step conflicts, is read again and
    // found taken. The debit that step holds is sent by this manager too (should the other
    // stop before it sends it, nothing would); its id makes it execute once.
    race_once("SagaStepped", 2, 2).await;
    // The other manager records the sent debit first; this one's record conflicts, is read
    // again and found done.
    race_once("SagaCommandSent", 3, 1).await;
}

/// An index too large to write is not written: the one before stays in force, and a start
/// finds the instances written since in `$all`.
#[tokio::test]
async fn an_index_too_large_to_write_leaves_the_one_before_in_force() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    open_pairs(&store, 4).await;
    let index = SagaManager::<TransferSaga>::index_stream().unwrap();
    let indexes = || async {
        store
            .read_stream(&index, 0, Direction::Forwards, 10)
            .await
            .unwrap()
            .len()
    };
    let waiting = |n: usize| {
        let store = store.clone();
        async move {
            let (t, a) = (format!("w{n}"), format!("a{n}"));
            request(&store, &t, &a, "offline-bob", 25, 60_000).await;
        }
    };
    // Three transfers wait for a credit that never comes; a clean stop writes the index.
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    for n in 0..3 {
        waiting(n).await;
    }
    running
        .wait_for("three waiting", |s| s.deadlines_pending == 3)
        .await;
    running.stop().await;
    assert_eq!(indexes().await, 1);

    // A manager whose index would be too large writes none.
    let small = manager(store.clone(), Arc::new(AtomicU32::new(0))).with_index_bytes_max(20);
    let (mut running, _) = spawn(small);
    waiting(3).await;
    running
        .wait_for("four waiting", |s| s.deadlines_pending == 4)
        .await;
    let status = running.stop().await;
    assert_eq!(status.loaded_at_start, 3, "{status:?}");
    assert_eq!(indexes().await, 1, "no index written");

    // The next start reads the three the old index names and the one written since.
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    running
        .wait_for("four waiting", |s| s.deadlines_pending == 4)
        .await;
    let status = running.stop().await;
    assert_eq!(status.loaded_at_start, 4, "{status:?}");
    assert_eq!(indexes().await, 2, "a new index");
}

/// An event of an instance that has finished takes no step, and the checkpoint still moves past
/// it in the store (a start does not read it again).
#[tokio::test]
async fn an_event_of_a_finished_instance_moves_the_stored_checkpoint() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    open_pairs(&store, 1).await;
    let (mut running, _) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    request_range(&store, 0..1).await;
    running
        .wait_for("the transfer completes", |s| s.steps == 3)
        .await;
    let late = NewEvent::json("TransferNoted", &serde_json::json!({})).unwrap();
    let noted = store
        .append(
            &StreamName::user("transfer-t0").unwrap(),
            ExpectedState::Any,
            vec![late],
        )
        .await
        .unwrap()
        .position;
    running
        .wait_for("the late event passed", |s| s.checkpoint >= Some(noted))
        .await;
    let status = running.stop().await;
    assert_eq!(status.steps, 3, "{status:?}");
    let stored = store
        .read_checkpoint(&SagaManager::<TransferSaga>::checkpoint_name())
        .await
        .unwrap();
    assert!(
        stored >= Some(noted),
        "stored {stored:?}, late event at {noted}"
    );
}

#[tokio::test]
async fn the_commands_of_a_step_continue_the_trace_of_the_event_that_caused_it() {
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    open(&store, "ann", 100).await;
    open(&store, "bob", 0).await;
    let (mut running, _manager) = spawn(manager(store.clone(), Arc::new(AtomicU32::new(0))));
    let event = NewEvent::json(
        "TransferRequested",
        &serde_json::json!({ "from": "ann", "to": "bob", "cents": 30, "expire_ms": 60_000 }),
    )
    .unwrap()
    .with_metadata(&CommandContext::new().in_trace(trace).metadata(1))
    .unwrap();
    store
        .append(
            &StreamName::user("transfer-t1").unwrap(),
            ExpectedState::NoStream,
            vec![event],
        )
        .await
        .unwrap();
    running
        .wait_for("debit and credit sent", |s| s.commands_sent == 2)
        .await;
    running.stop().await;
    let second = |account: &'static str| {
        let store = store.clone();
        async move {
            let event = store
                .read_stream(
                    &StreamName::user(format!("account-{account}")).unwrap(),
                    1,
                    Direction::Forwards,
                    1,
                )
                .await
                .unwrap()
                .remove(0);
            event.metadata_json()[factum_toolkit::TRACEPARENT_KEY]
                .as_str()
                .expect("a trace context")
                .to_owned()
        }
    };
    let (debit, credit) = (second("ann").await, second("bob").await);
    for child in [&debit, &credit] {
        assert_eq!(&child[..36], &trace[..36], "the request's trace");
        assert_ne!(&child[36..52], &trace[36..52], "a span of the step's own");
    }
    assert_ne!(debit, credit, "each step a span of its own");
}
