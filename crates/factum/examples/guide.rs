//! The service `docs/guide.md` builds step by step: bank accounts that can be opened, paid
//! into and drawn from (never below zero), behind a command bus, with an event processor that
//! warns the owner once when a balance drops under a threshold.
//!
//! `cargo run --example guide` runs it on the embedded store (`FACTUM_DATA_DIR`, default
//! `./factum-data`); `cargo test --example guide` runs its tests.

use std::sync::Arc;

use factum::{
    CommandBus, CommandContext, Decider, EventProcessor, EventStore, Inbox, RecordedEvent,
    Repository, ToAggregate, Upcasters, handler_fn,
};
use serde::{Deserialize, Serialize};

// --- Step 1: events, commands, errors --------------------------------------------------------

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

// --- Step 2: the decider ---------------------------------------------------------------------

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
    const CATEGORY: &'static str = "account";

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

    // Step 7: `Deposited` was once `{"euros": n}`; today it is version 2, in cents.
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

// --- Step 4: the command bus -----------------------------------------------------------------

/// The service's front door: every command goes through tracing, validation and authorisation.
fn bus(store: Arc<dyn EventStore>) -> anyhow::Result<CommandBus> {
    let accounts = Arc::new(Repository::with_store(store, Accounts).with_snapshots(1000));
    Ok(CommandBus::builder()
        .with_tracing()
        .with_validation()
        .with_authorization(|context, _command| context.user.is_some())
        .handle::<ToAggregate<Accounts>, _>(accounts.handler())
        .build()?)
}

// --- Step 5: reacting to events --------------------------------------------------------------

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
    store: Arc<dyn EventStore>,
    notifier: Arc<dyn Notifier>,
) -> anyhow::Result<EventProcessor> {
    let accounts = Arc::new(Repository::with_store(store.clone(), Accounts));
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
                    notifier
                        .notify(&owner, &text)
                        .map_err(factum::HandlerError::from)
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

struct Printed;

impl Notifier for Printed {
    fn notify(&self, owner: &str, text: &str) -> Result<(), String> {
        println!("  → to {owner}: {text}");
        Ok(())
    }
}

// --- Step 6: the service ---------------------------------------------------------------------

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::var("FACTUM_DATA_DIR").unwrap_or_else(|_| "./factum-data".into());
    let engine = factum_engine::Engine::open(&dir, factum_engine::Options::default())?;
    let store: Arc<dyn EventStore> = Arc::new(engine.clone());
    let bus = bus(store.clone())?;

    // The processor runs beside the service until it stops.
    let processor = low_balance_processor("low-balance", store.clone(), Arc::new(Printed)).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        processor
            .run(async {
                let _ = stopped.await;
            })
            .await
    });

    let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let ann = CommandContext::new().by("ann");
    let account = |command| ToAggregate::<Accounts>::new(id.clone(), command);
    println!("account {id} on the embedded store in {dir}");
    bus.send(
        account(AccountCommand::Open {
            owner: "ann".into(),
        }),
        ann.clone(),
    )
    .await?;
    bus.send(
        account(AccountCommand::Deposit { cents: 5000 }),
        ann.clone(),
    )
    .await?;
    let done = bus
        .send(
            account(AccountCommand::Withdraw { cents: 4500 }),
            ann.clone(),
        )
        .await?;
    println!(
        "  withdrew 45.00: revision {:?}, position {:?}",
        done.revision, done.position
    );
    match bus
        .send(
            account(AccountCommand::Withdraw { cents: 10000 }),
            ann.clone(),
        )
        .await
    {
        Err(e) => match e.rejection::<AccountError>() {
            Some(why) => println!("  withdrawing 100.00 refused: {why}"),
            None => return Err(e.into()),
        },
        Ok(_) => anyhow::bail!("an overdraft was accepted"),
    }
    if let Err(e) = bus
        .send(
            account(AccountCommand::Deposit { cents: 1 }),
            CommandContext::new(),
        )
        .await
    {
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
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use factum::testing::given;
    use factum::{ExpectedState, MemoryStore, NewEvent, StreamName};
    use parking_lot::Mutex;

    fn opened() -> AccountEvent {
        AccountEvent::AccountOpened {
            owner: "ann".into(),
        }
    }

    // Step 3: test the decider without any I/O.
    #[test]
    fn a_withdrawal_needs_the_funds() {
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

    #[derive(Default)]
    struct Recorded(Mutex<Vec<String>>);

    impl Notifier for Recorded {
        fn notify(&self, owner: &str, text: &str) -> Result<(), String> {
            self.0.lock().push(format!("{owner}: {text}"));
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_service_refuses_overdrafts_and_warns_once_about_a_low_balance() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
        let bus = bus(store.clone()).unwrap();
        let ann = CommandContext::new().by("ann");
        let send = |command| bus.send(ToAggregate::<Accounts>::new("a-1", command), ann.clone());
        send(AccountCommand::Open {
            owner: "ann".into(),
        })
        .await
        .unwrap();
        send(AccountCommand::Deposit { cents: 5000 }).await.unwrap();
        send(AccountCommand::Withdraw { cents: 3000 })
            .await
            .unwrap(); // 20.00 left
        send(AccountCommand::Withdraw { cents: 1500 })
            .await
            .unwrap(); // 5.00 left: warn
        let refused = send(AccountCommand::Withdraw { cents: 600 })
            .await
            .unwrap_err();
        assert_eq!(
            refused.rejection::<AccountError>(),
            Some(&AccountError::InsufficientFunds { balance: 500 })
        );
        // Without a user, the authorisation layer refuses.
        assert!(
            bus.send(
                ToAggregate::<Accounts>::new("a-1", AccountCommand::Deposit { cents: 1 }),
                CommandContext::new()
            )
            .await
            .is_err()
        );

        let notifier = Arc::new(Recorded::default());
        let processor = low_balance_processor("low-balance", store.clone(), notifier.clone())
            .await
            .unwrap();
        processor.run_until(store.head()).await.unwrap();
        assert_eq!(*notifier.0.lock(), vec!["ann: your balance is 500 cents"]);

        // Handled again from the start (as after a lost checkpoint): no second warning.
        let again = low_balance_processor("low-balance-again", store.clone(), notifier.clone())
            .await
            .unwrap();
        again.run_until(store.head()).await.unwrap();
        assert_eq!(notifier.0.lock().len(), 1);
    }

    #[tokio::test]
    async fn old_deposits_in_euros_are_read_as_cents() {
        let store = MemoryStore::new();
        let stream = StreamName::user("account-old").unwrap();
        let v1 = NewEvent::json("Deposited", &serde_json::json!({"euros": 7}))
            .unwrap()
            .with_metadata(&serde_json::json!({"$schemaVersion": 1}))
            .unwrap();
        let opened = NewEvent::json("AccountOpened", &serde_json::json!({"owner": "ann"})).unwrap();
        store
            .append(&stream, ExpectedState::NoStream, vec![opened, v1])
            .await
            .unwrap();
        let accounts = Repository::new(store, Accounts);
        assert_eq!(accounts.load("old").await.unwrap().state.balance, 700);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_service_runs_on_the_embedded_store() {
        let dir = tempfile::tempdir().unwrap();
        let engine =
            factum_engine::Engine::open(dir.path(), factum_engine::Options::default()).unwrap();
        let store: Arc<dyn EventStore> = Arc::new(engine.clone());
        let bus = bus(store).unwrap();
        let ann = CommandContext::new().by("ann");
        for command in [
            AccountCommand::Open {
                owner: "ann".into(),
            },
            AccountCommand::Deposit { cents: 10 },
        ] {
            bus.send(ToAggregate::<Accounts>::new("a-2", command), ann.clone())
                .await
                .unwrap();
        }
        engine.close().unwrap();
        let engine =
            factum_engine::Engine::open(dir.path(), factum_engine::Options::default()).unwrap();
        let accounts = Repository::new(engine.clone(), Accounts);
        assert_eq!(accounts.load("a-2").await.unwrap().state.balance, 10);
        engine.close().unwrap();
    }
}
