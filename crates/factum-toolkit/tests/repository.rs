//! The repository and the codec: conflicts, retries, schema evolution.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::Interfering;
use factum_core::Direction;
use factum_core::{EventStore, ExpectedState, MemoryStore, NewEvent, StreamName};
use factum_toolkit::{CodecError, CommandContext, Decider, Repository, RepositoryError, Upcasters};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Event {
    Deposited { cents: u64 },
    Frozen,
    Renamed(String),
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("account is frozen")]
struct IsFrozen;

#[derive(Default, Clone, Debug, PartialEq)]
struct Account {
    cents: u64,
    frozen: bool,
    name: String,
}

enum Command {
    Deposit(u64),
    Freeze,
    Rename(String),
}

/// An account whose `Deposited` events were once `{ "amount": <euros> }` (version 1) and
/// before that were called `Paid`.
struct Accounts;

impl Decider for Accounts {
    type State = Account;
    type Command = Command;
    type Event = Event;
    type Error = IsFrozen;
    const CATEGORY: &'static str = "account";

    fn initial_state(&self) -> Account {
        Account::default()
    }

    fn decide(&self, account: &Account, command: &Command) -> Result<Vec<Event>, IsFrozen> {
        if account.frozen {
            return Err(IsFrozen);
        }
        Ok(vec![match command {
            Command::Deposit(cents) => Event::Deposited { cents: *cents },
            Command::Freeze => Event::Frozen,
            Command::Rename(name) => Event::Renamed(name.clone()),
        }])
    }

    fn evolve(&self, mut account: Account, event: &Event) -> Account {
        match event {
            Event::Deposited { cents } => account.cents += cents,
            Event::Frozen => account.frozen = true,
            Event::Renamed(name) => account.name = name.clone(),
        }
        account
    }

    fn event_version(&self, event_type: &str) -> u32 {
        if event_type == "Deposited" { 2 } else { 1 }
    }

    fn upcasters(&self) -> Upcasters {
        Upcasters::default()
            .rename("Paid", 1, "Deposited")
            .upgrade("Deposited", 1, |data| {
                let euros = data["amount"].as_u64().ok_or("no amount")?;
                Ok(serde_json::json!({ "cents": euros * 100 }))
            })
    }
}

fn raw(event_type: &str, data: serde_json::Value, version: Option<u32>) -> NewEvent {
    let event = NewEvent::json(event_type, &data).unwrap();
    match version {
        Some(v) => event
            .with_metadata(&serde_json::json!({ "$schemaVersion": v }))
            .unwrap(),
        None => event,
    }
}

#[tokio::test]
async fn old_events_are_upcast_on_load() {
    let store = MemoryStore::new();
    let stream = StreamName::user("account-a").unwrap();
    store
        .append(
            &stream,
            ExpectedState::NoStream,
            vec![
                raw("Paid", serde_json::json!({"amount": 3}), None),
                raw("Deposited", serde_json::json!({"amount": 2}), Some(1)),
                raw("Deposited", serde_json::json!({"cents": 7}), Some(2)),
                raw("Frozen", serde_json::Value::Null, None),
                raw("Renamed", serde_json::json!("Ann"), None),
            ],
        )
        .await
        .unwrap();
    let accounts = Repository::new(store, Accounts);
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!(
        loaded.state,
        Account {
            cents: 507,
            frozen: true,
            name: "Ann".into()
        }
    );
    assert_eq!(loaded.revision, Some(4));
}

#[tokio::test]
async fn events_written_by_newer_code_or_without_an_upcaster_are_refused() {
    let store = MemoryStore::new();
    let future = StreamName::user("account-future").unwrap();
    store
        .append(
            &future,
            ExpectedState::Any,
            vec![raw("Deposited", serde_json::json!({"cents": 1}), Some(3))],
        )
        .await
        .unwrap();
    let stuck = StreamName::user("account-stuck").unwrap();
    store
        .append(
            &stuck,
            ExpectedState::Any,
            vec![raw("Frozen", serde_json::Value::Null, Some(0))],
        )
        .await
        .unwrap();
    let garbage = StreamName::user("account-garbage").unwrap();
    store
        .append(
            &garbage,
            ExpectedState::Any,
            vec![raw("Deposited", serde_json::json!({"cents": "x"}), Some(2))],
        )
        .await
        .unwrap();
    let accounts = Repository::new(store, Accounts);
    assert!(matches!(
        accounts.load("future").await,
        Err(RepositoryError::Codec(CodecError::FutureVersion {
            version: 3,
            current: 2,
            ..
        }))
    ));
    assert!(matches!(
        accounts.load("stuck").await,
        Err(RepositoryError::Codec(CodecError::NoUpcaster {
            version: 0,
            current: 1,
            ..
        }))
    ));
    assert!(matches!(
        accounts.load("garbage").await,
        Err(RepositoryError::Codec(CodecError::Decode {
            position: 2,
            ..
        }))
    ));
}

#[tokio::test]
async fn new_events_are_written_at_the_current_version_and_read_back() {
    let store = MemoryStore::new();
    let accounts = Repository::new(store.clone(), Accounts);
    let context = CommandContext::new();
    accounts
        .execute("b", Command::Deposit(250), &context)
        .await
        .unwrap();
    accounts
        .execute("b", Command::Rename("Bo".into()), &context)
        .await
        .unwrap();
    let done = accounts
        .execute("b", Command::Freeze, &context)
        .await
        .unwrap();
    assert_eq!((done.revision, done.position), (Some(2), Some(2)));
    let stored = store
        .read_stream(
            &StreamName::user("account-b").unwrap(),
            0,
            Direction::Forwards,
            10,
        )
        .await
        .unwrap();
    assert_eq!(stored[0].event_type, "Deposited");
    assert_eq!(
        stored[0].data,
        serde_json::to_vec(&serde_json::json!({"cents": 250})).unwrap()
    );
    assert_eq!(stored[0].metadata_json()["$schemaVersion"], 2);
    assert_eq!(stored[2].event_type, "Frozen");
    assert!(matches!(
        accounts.execute("b", Command::Deposit(1), &context).await,
        Err(RepositoryError::Rejected(IsFrozen))
    ));
    assert_eq!(store.head(), 3, "a rejection writes nothing");
    assert_eq!(
        accounts.load("b").await.unwrap().state,
        Account {
            cents: 250,
            frozen: true,
            name: "Bo".into()
        }
    );
}

#[tokio::test]
async fn an_invalid_id_is_refused() {
    let accounts = Repository::new(MemoryStore::new(), Accounts);
    let long = "x".repeat(600);
    assert!(matches!(
        accounts
            .execute(&long, Command::Freeze, &CommandContext::new())
            .await,
        Err(RepositoryError::InvalidId(_))
    ));
}

#[tokio::test]
async fn an_empty_id_is_refused_and_writes_nothing() {
    let store = MemoryStore::new();
    let accounts = Repository::new(store.clone(), Accounts);
    let refused = accounts
        .execute("", Command::Freeze, &CommandContext::new())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&refused, RepositoryError::InvalidId(why) if why.contains("empty")),
        "{refused}"
    );
    assert!(matches!(
        accounts.load("").await,
        Err(RepositoryError::InvalidId(_))
    ));
    assert_eq!(store.head(), 0);
}

/// A store where another writer deposits a cent just before our first append (or before every
/// one), with `metadata` (default: version 2 and nothing else).
fn interfering(every_time: bool, metadata: Option<serde_json::Value>) -> Interfering {
    Interfering::new(move |_, _, made| {
        (every_time || made == 0).then(|| {
            let mut foreign = raw("Deposited", serde_json::json!({"cents": 1}), Some(2));
            if let Some(metadata) = &metadata {
                foreign = foreign.with_metadata(metadata).unwrap();
            }
            vec![foreign]
        })
    })
}

#[tokio::test]
async fn a_conflict_is_decided_again_on_the_new_state() {
    let store = Arc::new(interfering(false, None));
    let accounts = Repository::new(store.clone(), Accounts);
    let done = accounts
        .execute("c", Command::Deposit(10), &CommandContext::new())
        .await
        .unwrap();
    assert_eq!(done.attempts, 2);
    assert_eq!(done.revision, Some(1));
    assert_eq!(
        accounts.load("c").await.unwrap().state.cents,
        11,
        "both writes count once"
    );
}

#[tokio::test]
async fn a_command_that_keeps_losing_gives_up_and_writes_nothing_of_its_own() {
    let store = Arc::new(interfering(true, None));
    let accounts = Repository::new(store.clone(), Accounts).with_attempts_max(3);
    match accounts
        .execute("d", Command::Deposit(500), &CommandContext::new())
        .await
    {
        Err(RepositoryError::Conflict { stream, attempts }) => {
            assert_eq!((stream.as_str(), attempts), ("account-d", 3));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.foreign_writes.load(Ordering::SeqCst), 3);
    assert_eq!(
        accounts.load("d").await.unwrap().state.cents,
        3,
        "only the foreign deposits"
    );
}

#[tokio::test]
async fn an_idempotent_command_is_executed_once_per_aggregate() {
    let accounts = Repository::new(MemoryStore::new(), Accounts);
    let delivery = CommandContext::from_message("msg-1", Some("corr-1"));
    let first = accounts
        .execute("e", Command::Deposit(7), &delivery)
        .await
        .unwrap();
    assert!(!first.duplicate);
    // Other commands in between do not hide the first delivery's events.
    accounts
        .execute("e", Command::Deposit(1), &CommandContext::new())
        .await
        .unwrap();
    let again = accounts
        .execute("e", Command::Deposit(7), &delivery)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!((again.revision, again.position), (Some(1), None));
    assert!(again.events.is_empty());
    assert_eq!(accounts.load("e").await.unwrap().state.cents, 8);

    // The same message on another aggregate is another effect; another message is new.
    let other = accounts
        .execute("f", Command::Deposit(7), &delivery)
        .await
        .unwrap();
    assert!(!other.duplicate);
    let next = CommandContext::from_message("msg-2", Some("corr-1"));
    assert!(
        !accounts
            .execute("e", Command::Deposit(7), &next)
            .await
            .unwrap()
            .duplicate
    );
    assert_eq!(accounts.load("e").await.unwrap().state.cents, 15);

    // The events carry the message as their cause, and its correlation.
    let stored = accounts
        .store()
        .read_stream(
            &StreamName::user("account-e").unwrap(),
            0,
            Direction::Forwards,
            1,
        )
        .await
        .unwrap();
    let metadata = stored[0].metadata_json();
    assert_eq!(metadata["$causationId"], "msg-1");
    assert_eq!(metadata["$correlationId"], "corr-1");
    assert_eq!(
        metadata["$commandId"],
        CommandContext::derived_id("msg-1", "message").to_string()
    );
}

#[tokio::test]
async fn an_idempotent_command_that_loses_a_race_to_its_own_redelivery_is_a_duplicate() {
    // The other delivery of the same message appends between this one's load and append: the
    // append conflicts, the command is loaded again, and finds the other delivery's events.
    let delivery = CommandContext::from_message("msg-race", None);
    let store = Arc::new(interfering(false, Some(delivery.metadata(2))));
    let accounts = Repository::new(store.clone(), Accounts);
    let done = accounts
        .execute("g", Command::Deposit(5), &delivery)
        .await
        .unwrap();
    assert!(done.duplicate, "{done:?}");
    assert_eq!(done.attempts, 2);
    assert_eq!(store.foreign_writes.load(Ordering::SeqCst), 1);
    assert_eq!(
        accounts.load("g").await.unwrap().state.cents,
        1,
        "one deposit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_one_aggregate_at_the_same_time_wait_for_each_other_instead_of_conflicting() {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        factum_engine::Engine::open(dir.path(), factum_engine::EngineOptions::default()).unwrap();
    // One attempt each: a command decided on a stale state would fail with a conflict.
    let accounts = Arc::new(Repository::new(engine, Accounts).with_attempts_max(1));
    let commands: Vec<_> = (1..=32u64)
        .map(|cents| {
            let accounts = accounts.clone();
            tokio::spawn(async move {
                accounts
                    .execute("hot", Command::Deposit(cents), &CommandContext::new())
                    .await
            })
        })
        .collect();
    for command in commands {
        let done = command.await.unwrap().unwrap();
        assert_eq!(done.attempts, 1);
    }
    let loaded = accounts.load("hot").await.unwrap();
    assert_eq!(loaded.revision, Some(31));
    assert_eq!(loaded.state.cents, (1..=32).sum::<u64>());
}
