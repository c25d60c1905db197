//! The service `docs/guide.md` builds, step by step: bank accounts that can be opened, paid
//! into and drawn from (never below zero), behind a command bus, with an event processor that
//! warns the owner once when a balance drops under a threshold. The guide's Rust blocks, in
//! order, are this file.
//!
//! `cargo run --example guide` runs it on the embedded store (`FACTUM_DATA_DIR`, default
//! `./factum-data`); `cargo test --example guide` runs its tests.

use serde::{Deserialize, Serialize};

/// What happens to an account. The variant name is the stored event type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    AccountOpened {
        owner: String,
    },
    Deposited {
        cents: u64,
    },
    /// With the balance it leaves, which readers of the event need.
    Withdrawn {
        cents: u64,
        balance: u64,
    },
}

/// What can be asked of an account.
#[derive(Clone, Debug, PartialEq)]
enum AccountCommand {
    Open { owner: String },
    Deposit { cents: u64 },
    Withdraw { cents: u64 },
}

/// Why an account refuses.
#[derive(Debug, PartialEq, thiserror::Error)]
enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("an amount must be more than zero")]
    ZeroAmount,
    #[error("insufficient funds: the balance is {balance} cents")]
    InsufficientFunds { balance: u64 },
}

use factum::{Decider, Upcasters};

/// An account's state. Serde, so that it can be snapshotted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Account {
    owner: Option<String>,
    balance: u64,
}

struct Accounts;

impl Decider for Accounts {
    type State = Account;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    const CATEGORY: &'static str = "account"; // account `a-1` lives in stream `account-a-1`

    fn initial_state(&self) -> Account {
        Account::default()
    }

    fn decide(
        &self,
        account: &Account,
        command: &AccountCommand,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner } => match account.owner {
                Some(_) => Err(AccountError::AlreadyOpen),
                None => Ok(vec![AccountEvent::AccountOpened {
                    owner: owner.clone(),
                }]),
            },
            _ if account.owner.is_none() => Err(AccountError::NotOpen),
            AccountCommand::Deposit { cents: 0 } | AccountCommand::Withdraw { cents: 0 } => {
                Err(AccountError::ZeroAmount)
            }
            AccountCommand::Deposit { cents } => {
                Ok(vec![AccountEvent::Deposited { cents: *cents }])
            }
            AccountCommand::Withdraw { cents } if *cents > account.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: account.balance,
                })
            }
            AccountCommand::Withdraw { cents } => Ok(vec![AccountEvent::Withdrawn {
                cents: *cents,
                balance: account.balance - cents,
            }]),
        }
    }

    fn evolve(&self, mut account: Account, event: &AccountEvent) -> Account {
        match event {
            AccountEvent::AccountOpened { owner } => account.owner = Some(owner.clone()),
            AccountEvent::Deposited { cents } => account.balance += cents,
            AccountEvent::Withdrawn { balance, .. } => account.balance = *balance,
        }
        account
    }

    // Step 5 explains these two: `Deposited` was once `{"euros": n}`.
    fn event_version(&self, event_type: &str) -> u32 {
        if event_type == "Deposited" { 2 } else { 1 }
    }

    fn upcasters(&self) -> Upcasters {
        Upcasters::default().upgrade("Deposited", 1, |data| {
            let euros = data["euros"]
                .as_u64()
                .ok_or("no 'euros' in a version 1 deposit")?;
            Ok(serde_json::json!({ "cents": euros * 100 }))
        })
    }
}

#[cfg(test)]
fn opened() -> AccountEvent {
    AccountEvent::AccountOpened {
        owner: "ann".into(),
    }
}

#[test]
fn a_withdrawal_needs_the_funds() {
    use factum::testing::given;

    given(Accounts, [opened(), AccountEvent::Deposited { cents: 500 }])
        .when(AccountCommand::Withdraw { cents: 200 })
        .then([AccountEvent::Withdrawn {
            cents: 200,
            balance: 300,
        }]);
    given(Accounts, [opened(), AccountEvent::Deposited { cents: 500 }])
        .when(AccountCommand::Withdraw { cents: 501 })
        .then_rejected(AccountError::InsufficientFunds { balance: 500 });
    given(Accounts, [])
        .when(AccountCommand::Deposit { cents: 1 })
        .then_rejected(AccountError::NotOpen);
    given(Accounts, [opened()])
        .when(AccountCommand::Open {
            owner: "bob".into(),
        })
        .then_rejected(AccountError::AlreadyOpen);
}

use factum::{CommandContext, IntoStore, Repository};

/// Opens account `id` for `owner` and pays in `cents`; returns the account as it is then.
async fn open_account(
    store: impl IntoStore,
    id: &str,
    owner: &str,
    cents: u64,
) -> anyhow::Result<Account> {
    let accounts = Repository::new(store, Accounts);
    let context = CommandContext::new().by(owner);
    let open = AccountCommand::Open {
        owner: owner.into(),
    };
    accounts.execute(id, open, &context).await?;
    let done = accounts
        .execute(id, AccountCommand::Deposit { cents }, &context)
        .await?;
    // done.revision: the stream's revision now; done.position: where the event is in the log.
    println!("  opened {id}: revision {:?}", done.revision);
    Ok(accounts.load(id).await?.state)
}

#[tokio::test]
async fn old_deposits_in_euros_are_read_as_cents() -> anyhow::Result<()> {
    use factum::{EventStore, ExpectedState, MemoryStore, NewEvent, StreamName};

    let store = MemoryStore::new();
    let stream = StreamName::user("account-old")?;
    let opened = NewEvent::json("AccountOpened", &serde_json::json!({"owner": "ann"}))?;
    let v1 = NewEvent::json("Deposited", &serde_json::json!({"euros": 7}))?
        .with_metadata(&serde_json::json!({"$schemaVersion": 1}))?;
    store
        .append(&stream, ExpectedState::NoStream, vec![opened, v1])
        .await?;
    let accounts = Repository::new(store, Accounts);
    assert_eq!(accounts.load("old").await?.state.balance, 700);
    Ok(())
}

use std::sync::Arc;

use factum::{CommandBus, ToAggregate};

/// The service's front door: every command goes through tracing, validation and authorisation.
fn bus(store: impl IntoStore) -> anyhow::Result<CommandBus> {
    let accounts = Arc::new(Repository::new(store, Accounts).with_snapshots(1000));
    Ok(CommandBus::builder()
        .with_tracing()
        .with_validation()
        .with_authorization(|context, _command| context.user.is_some())
        .handle::<ToAggregate<Accounts>, _>(accounts.handler())
        .build()?)
}

/// Withdraws `cents` from account `id` through the bus, and says how it went.
async fn withdraw(bus: &CommandBus, id: &str, cents: u64) -> anyhow::Result<()> {
    let ann = CommandContext::new().by("ann");
    let command = ToAggregate::<Accounts>::new(id, AccountCommand::Withdraw { cents });
    match bus.send(command, ann).await {
        Ok(done) => println!("  withdrew {cents} cents: position {:?}", done.position),
        Err(e) => match e.rejection::<AccountError>() {
            Some(why) => println!("  withdrawing {cents} cents refused: {why}"), // typed
            None => return Err(e.into()), // something else went wrong
        },
    }
    Ok(())
}

use factum::{EventProcessor, HandlerError, Inbox, RecordedEvent, handler_fn};

/// Below this, the owner is warned.
const LOW_BALANCE_CENTS: u64 = 1000;

/// Where warnings go (an e-mail or a push message in a real service).
trait Notifier: Send + Sync + 'static {
    fn notify(&self, owner: &str, text: &str) -> Result<(), String>;
}

/// Warns the owner when a withdrawal takes the balance under [`LOW_BALANCE_CENTS`]; once per
/// event, even when the event is handled again.
async fn low_balance_processor(
    name: &str,
    store: impl IntoStore,
    notifier: Arc<dyn Notifier>,
) -> anyhow::Result<EventProcessor> {
    let store = store.into_store();
    let accounts = Arc::new(Repository::new(store.clone(), Accounts));
    let inbox = Arc::new(Inbox::open(store.clone(), "low-balance").await?);
    let warn = handler_fn("warn_low_balance", move |event: RecordedEvent| {
        let (accounts, inbox, notifier) = (accounts.clone(), inbox.clone(), notifier.clone());
        async move {
            #[derive(Deserialize)]
            struct Withdrawn {
                cents: u64,
                balance: u64,
            }
            let withdrawn: Withdrawn = serde_json::from_slice(&event.data)?;
            let crossed = withdrawn.balance < LOW_BALANCE_CENTS
                && withdrawn.balance + withdrawn.cents >= LOW_BALANCE_CENTS;
            if !crossed {
                return Ok(());
            }
            let id = event.stream.as_str().trim_start_matches("account-");
            let owner = accounts.load(id).await?.state.owner.unwrap_or_default();
            let text = format!("your balance is {} cents", withdrawn.balance);
            inbox
                .once(&event, || async {
                    notifier.notify(&owner, &text).map_err(HandlerError::from)
                })
                .await?;
            Ok(())
        }
    });
    Ok(EventProcessor::builder(name, store)
        .on("Withdrawn", warn)
        .stream_prefixes(["account-"])
        .build()?)
}

use factum::{Engine, EngineOptions};

/// Prints warnings: the notifier of `cargo run --example guide`.
struct Printed;

impl Notifier for Printed {
    fn notify(&self, owner: &str, text: &str) -> Result<(), String> {
        println!("  → to {owner}: {text}");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::var("FACTUM_DATA_DIR").unwrap_or_else(|_| "./factum-data".into());
    let engine = Engine::open(&dir, EngineOptions::default())?;
    // A new account every run: a second run finds the first one's in the store.
    let id = format!("a-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    println!("account {id} on the embedded store in {dir}");
    let account = open_account(engine.clone(), &id, "ann", 5000).await?;
    println!("  balance {} cents", account.balance);

    // The processor runs beside the service until it is told to stop.
    let processor = low_balance_processor("low-balance", engine.clone(), Arc::new(Printed)).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        processor
            .run(async {
                let _ = stopped.await;
            })
            .await
    });

    let bus = bus(engine.clone())?;
    withdraw(&bus, &id, 4500).await?; // 5.00 left: the owner is warned
    withdraw(&bus, &id, 10000).await?; // refused: insufficient funds
    let nobody = CommandContext::new(); // no user: the authorisation layer refuses
    let deposit = ToAggregate::<Accounts>::new(&id, AccountCommand::Deposit { cents: 1 });
    if let Err(e) = bus.send(deposit, nobody).await {
        println!("  a deposit without a user: {e}");
    }

    // Give the processor a moment to see the withdrawal, then stop it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let _ = stop.send(());
    let stats = running.await??;
    println!("  the processor handled {} event(s)", stats.events);
    engine.close()?;
    Ok(())
}

#[cfg(test)]
#[derive(Default)]
struct Recorded(parking_lot::Mutex<Vec<String>>);

#[cfg(test)]
impl Notifier for Recorded {
    fn notify(&self, owner: &str, text: &str) -> Result<(), String> {
        self.0.lock().push(format!("{owner}: {text}"));
        Ok(())
    }
}

#[tokio::test]
async fn the_service_refuses_overdrafts_and_warns_once_about_a_low_balance() -> anyhow::Result<()> {
    use factum::EventStore;

    let store = factum::MemoryStore::new();
    open_account(store.clone(), "a-1", "ann", 5000).await?;
    let bus = bus(store.clone())?;
    let ann = CommandContext::new().by("ann");
    let send = |command| bus.send(ToAggregate::<Accounts>::new("a-1", command), ann.clone());
    send(AccountCommand::Withdraw { cents: 3000 }).await?; // 20.00 left
    send(AccountCommand::Withdraw { cents: 1500 }).await?; // 5.00 left: warn
    let refused = send(AccountCommand::Withdraw { cents: 600 })
        .await
        .expect_err("an overdraft");
    assert_eq!(
        refused.rejection::<AccountError>(),
        Some(&AccountError::InsufficientFunds { balance: 500 })
    );
    // Without a user, the authorisation layer refuses.
    let deposit = ToAggregate::<Accounts>::new("a-1", AccountCommand::Deposit { cents: 1 });
    assert!(bus.send(deposit, CommandContext::new()).await.is_err());

    let notifier = Arc::new(Recorded::default());
    let processor = low_balance_processor("low-balance", store.clone(), notifier.clone()).await?;
    processor.run_until(store.head()).await?;
    assert_eq!(*notifier.0.lock(), vec!["ann: your balance is 500 cents"]);

    // Handled again from the start (as after a lost checkpoint): no second warning.
    let again = low_balance_processor("low-balance-again", store.clone(), notifier.clone()).await?;
    again.run_until(store.head()).await?;
    assert_eq!(notifier.0.lock().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_runs_on_the_embedded_store() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path(), EngineOptions::default())?;
    let account = open_account(engine.clone(), "a-2", "ann", 10).await?;
    assert_eq!(account.balance, 10);
    engine.close()?;
    let engine = Engine::open(dir.path(), EngineOptions::default())?;
    let accounts = Repository::new(engine.clone(), Accounts);
    assert_eq!(accounts.load("a-2").await?.state.balance, 10);
    engine.close()?;
    Ok(())
}
