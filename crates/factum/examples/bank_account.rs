//! Bank accounts with a read model (seed 002): commands go to the `account-{id}` streams, a
//! projection keeps an `accounts` table in SQLite up to date, and queries read only that table
//! — one account, or every account under a balance. A query right after a command waits for
//! the projection to reach the command's position, so it sees its own write.
//!
//! `cargo run --example bank_account` runs it on the embedded store (`FACTUM_DATA_DIR`,
//! default `./factum-data`) with the read model in `FACTUM_READ_MODEL` (default
//! `./factum-read-model.db`); `cargo run --example bank_account -- rebuild` rebuilds the read
//! model with a progress bar; `cargo test --example bank_account` runs its tests, on SQLite
//! and on the PostgreSQL at 127.0.0.1:5432.

use std::sync::Arc;
use std::time::Duration;

use factum::{
    ApplyError, CommandContext, Decider, EventCodec, EventStore, ProjectionError, Projector,
    ReadModel, RecordedEvent, Repository, SqliteReadModel, Table, Tx, Value,
};
use serde::{Deserialize, Serialize};

// --- The write side: a decider per account --------------------------------------------------

/// What happens to an account. The variant name is the stored event type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    AccountOpened { owner: String },
    Deposited { cents: i64 },
    Withdrawn { cents: i64 },
    AccountSuspended { reason: String },
}

#[derive(Clone, Debug, PartialEq)]
enum AccountCommand {
    Open { owner: String },
    Deposit { cents: i64 },
    Withdraw { cents: i64 },
    Suspend { reason: String },
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("the account is suspended")]
    Suspended,
    #[error("amounts are positive")]
    NotPositive,
    #[error("the balance is {balance} cents; {asked} cannot be withdrawn")]
    InsufficientFunds { balance: i64, asked: i64 },
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Account {
    open: bool,
    balance: i64,
    suspended: bool,
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
        state: &Account,
        command: &AccountCommand,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand::*;
        match command {
            Open { owner } if !state.open => Ok(vec![AccountEvent::AccountOpened {
                owner: owner.clone(),
            }]),
            Open { .. } => Err(AccountError::AlreadyOpen),
            _ if !state.open => Err(AccountError::NotOpen),
            _ if state.suspended => Err(AccountError::Suspended),
            Deposit { cents } | Withdraw { cents } if *cents <= 0 => Err(AccountError::NotPositive),
            Deposit { cents } => Ok(vec![AccountEvent::Deposited { cents: *cents }]),
            Withdraw { cents } if *cents > state.balance => Err(AccountError::InsufficientFunds {
                balance: state.balance,
                asked: *cents,
            }),
            Withdraw { cents } => Ok(vec![AccountEvent::Withdrawn { cents: *cents }]),
            Suspend { reason } => Ok(vec![AccountEvent::AccountSuspended {
                reason: reason.clone(),
            }]),
        }
    }

    fn evolve(&self, mut state: Account, event: &AccountEvent) -> Account {
        match event {
            AccountEvent::AccountOpened { .. } => state.open = true,
            AccountEvent::Deposited { cents } => state.balance += cents,
            AccountEvent::Withdrawn { cents } => state.balance -= cents,
            AccountEvent::AccountSuspended { .. } => state.suspended = true,
        }
        state
    }
}

// --- The read side: a projection and the queries --------------------------------------------

/// Folds account events into the `accounts` table, decoding them with the decider's codec
/// (so upcasters apply here too).
struct AccountsView {
    codec: EventCodec<Accounts>,
}

impl AccountsView {
    fn new() -> Self {
        AccountsView {
            codec: EventCodec::new(&Accounts),
        }
    }
}

impl factum::Projection for AccountsView {
    fn name(&self) -> &str {
        "accounts"
    }

    fn tables(&self) -> Vec<Table> {
        vec![
            Table::new(
                "accounts",
                "id TEXT PRIMARY KEY, owner TEXT NOT NULL, balance BIGINT NOT NULL, \
             suspended BOOLEAN NOT NULL, updated_at_us BIGINT NOT NULL",
            )
            .index("accounts_by_balance", "balance"),
        ]
    }

    fn filter(&self) -> factum::SubscriptionFilter {
        factum::SubscriptionFilter {
            stream_prefixes: vec!["account-".into()],
            ..Default::default()
        }
    }

    fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ApplyError> {
        let id = Value::from(&event.stream.as_str()["account-".len()..]);
        let at = Value::Int(event.recorded_at_us as i64);
        // Row changes: the read model writes the SQL, and PostgreSQL runs a batch's changes
        // to the table as a few statements instead of one per event.
        match self.codec.decode(&Accounts, event)? {
            AccountEvent::AccountOpened { owner } => {
                tx.insert("accounts")
                    .set("id", id)
                    .set("owner", owner)
                    .set("balance", 0)
                    .set("suspended", false)
                    .set("updated_at_us", at);
            }
            AccountEvent::Deposited { cents } => {
                tx.update("accounts")
                    .key("id", id)
                    .set("updated_at_us", at)
                    .add("balance", cents);
            }
            AccountEvent::Withdrawn { cents } => {
                tx.update("accounts")
                    .key("id", id)
                    .set("updated_at_us", at)
                    .add("balance", -cents);
            }
            AccountEvent::AccountSuspended { .. } => {
                tx.update("accounts")
                    .key("id", id)
                    .set("suspended", true)
                    .set("updated_at_us", at);
            }
        }
        Ok(())
    }
}

/// A row of the `accounts` table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
struct AccountRow {
    id: String,
    owner: String,
    balance: i64,
    suspended: bool,
}

/// The queries: they read the read model only, never the event store.
struct AccountQueries {
    read_model: Arc<dyn ReadModel>,
}

impl AccountQueries {
    /// One account. With `after`, the position a command returned, it first waits (at most
    /// a second) until the projection has applied that command.
    async fn account(
        &self,
        id: &str,
        after: Option<u64>,
    ) -> Result<Option<AccountRow>, ProjectionError> {
        if let Some(position) = after {
            self.read_model
                .wait_for("accounts", position, Duration::from_secs(1))
                .await?;
        }
        let rows = self
            .read_model
            .query(
                "SELECT id, owner, balance, suspended FROM accounts WHERE id = $1",
                &[id.into()],
            )
            .await?;
        rows.first().map(|row| row.to()).transpose()
    }

    /// Accounts whose balance is under `cents`, poorest first.
    async fn under(&self, cents: i64) -> Result<Vec<AccountRow>, ProjectionError> {
        self.read_model
            .query(
                "SELECT id, owner, balance, suspended FROM accounts WHERE balance < $1 \
                 ORDER BY balance, id",
                &[cents.into()],
            )
            .await?
            .iter()
            .map(|row| row.to())
            .collect()
    }
}

// --- Running it -------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::var("FACTUM_DATA_DIR").unwrap_or_else(|_| "./factum-data".into());
    let file =
        std::env::var("FACTUM_READ_MODEL").unwrap_or_else(|_| "./factum-read-model.db".into());
    let engine = factum::Engine::open(&dir, factum::EngineOptions::default())?;
    let store: Arc<dyn EventStore> = Arc::new(engine.clone());
    let read_model: Arc<dyn ReadModel> = Arc::new(SqliteReadModel::open(&file).await?);
    let projector = Projector::new(store.clone(), read_model.clone(), AccountsView::new());

    if std::env::args().nth(1).as_deref() == Some("rebuild") {
        let bar = indicatif::ProgressBar::new(store.head()).with_style(
            indicatif::ProgressStyle::with_template(
                "rebuilding {msg} [{bar:30}] {pos}/{len} events, {per_sec}, ETA {eta}",
            )?,
        );
        bar.set_message("accounts");
        let stats = projector
            .rebuild(|progress| {
                bar.set_length(progress.target);
                bar.set_position(progress.position.map_or(0, |p| p + 1));
            })
            .await?;
        bar.finish();
        println!("rebuilt 'accounts' from {} events", stats.events);
        engine.close()?;
        return Ok(());
    }

    println!("accounts on the embedded store in {dir}, read model in {file}");
    projector.install().await?;
    let running = projector.spawn();

    let accounts = Repository::new(store.clone(), Accounts);
    let queries = AccountQueries {
        read_model: read_model.clone(),
    };
    let run = uuid::Uuid::now_v7().simple().to_string()[24..].to_owned();
    let context = CommandContext::new();
    for (name, owner, deposit, withdraw) in [
        ("alice", "Alice", 12_000, 500),
        ("bob", "Bob", 4_000, 3_950),
        ("carol", "Carol", 90, 0),
    ] {
        let id = format!("{name}-{run}");
        accounts
            .execute(
                &id,
                AccountCommand::Open {
                    owner: owner.into(),
                },
                &context,
            )
            .await?;
        let mut done = accounts
            .execute(&id, AccountCommand::Deposit { cents: deposit }, &context)
            .await?;
        if withdraw > 0 {
            done = accounts
                .execute(&id, AccountCommand::Withdraw { cents: withdraw }, &context)
                .await?;
        }
        let last = done.position;
        // Read-your-writes: the row shows the withdrawal just made.
        let row = queries.account(&id, last).await?;
        println!("  {id}: {row:?}");
    }
    let bob = format!("bob-{run}");
    let suspended = accounts
        .execute(
            &bob,
            AccountCommand::Suspend {
                reason: "fraud check".into(),
            },
            &context,
        )
        .await?;
    let row = queries.account(&bob, suspended.position).await?;
    println!("  suspended {bob}: {row:?}");
    match accounts
        .execute(&bob, AccountCommand::Deposit { cents: 1 }, &context)
        .await
    {
        Err(e) => println!("  a deposit to {bob} → rejected: {e}"),
        Ok(_) => anyhow::bail!("a suspended account took a deposit"),
    }
    println!("  accounts under 100 cents:");
    for row in queries.under(100).await? {
        println!(
            "    {:<20} {:>6} cents{}",
            row.id,
            row.balance,
            if row.suspended { " (suspended)" } else { "" }
        );
    }
    for status in factum::projection_statuses(&*store, &*read_model).await? {
        println!(
            "  projection {}: at {:?}, {} event(s) behind",
            status.state.name, status.state.position, status.behind
        );
    }
    running.stop().await?;
    engine.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use factum::testing::given;

    #[test]
    fn the_account_rules() {
        use AccountCommand::*;
        use AccountEvent::*;
        given(Accounts, [])
            .when(Open { owner: "A".into() })
            .then([AccountOpened { owner: "A".into() }]);
        given(
            Accounts,
            [AccountOpened { owner: "A".into() }, Deposited { cents: 10 }],
        )
        .when(Withdraw { cents: 11 })
        .then_rejected(AccountError::InsufficientFunds {
            balance: 10,
            asked: 11,
        });
        given(
            Accounts,
            [
                AccountOpened { owner: "A".into() },
                AccountSuspended { reason: "x".into() },
            ],
        )
        .when(Deposit { cents: 1 })
        .then_rejected(AccountError::Suspended);
        given(Accounts, [])
            .when(Deposit { cents: 1 })
            .then_rejected(AccountError::NotOpen);
    }

    /// Commands, then the queries, on a read model; every read follows its own write.
    async fn scenario(read_model: Arc<dyn ReadModel>) {
        let store: Arc<dyn EventStore> = Arc::new(factum::MemoryStore::new());
        let projector = Projector::new(store.clone(), read_model.clone(), AccountsView::new());
        projector.install().await.unwrap();
        let running = projector.spawn();
        let accounts = Repository::new(store.clone(), Accounts);
        let queries = AccountQueries {
            read_model: read_model.clone(),
        };
        let context = CommandContext::new();
        for (i, cents) in [500, 50, 5_000, 99].into_iter().enumerate() {
            let id = format!("acc{i}");
            accounts
                .execute(
                    &id,
                    AccountCommand::Open {
                        owner: format!("owner {i}"),
                    },
                    &context,
                )
                .await
                .unwrap();
            let done = accounts
                .execute(&id, AccountCommand::Deposit { cents }, &context)
                .await
                .unwrap();
            let row = queries.account(&id, done.position).await.unwrap().unwrap();
            assert_eq!(
                (row.balance, row.owner.as_str()),
                (cents, format!("owner {i}").as_str())
            );
        }
        let done = accounts
            .execute("acc2", AccountCommand::Withdraw { cents: 4_950 }, &context)
            .await
            .unwrap();
        assert_eq!(
            queries
                .account("acc2", done.position)
                .await
                .unwrap()
                .unwrap()
                .balance,
            50
        );
        let done = accounts
            .execute(
                "acc1",
                AccountCommand::Suspend { reason: "x".into() },
                &context,
            )
            .await
            .unwrap();
        assert!(
            queries
                .account("acc1", done.position)
                .await
                .unwrap()
                .unwrap()
                .suspended
        );
        let under: Vec<_> = queries
            .under(100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.balance))
            .collect();
        assert_eq!(
            under,
            [
                ("acc1".into(), 50),
                ("acc2".into(), 50),
                ("acc3".into(), 99)
            ]
        );
        assert_eq!(queries.account("nobody", None).await.unwrap(), None);
        running.stop().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        scenario(Arc::new(
            SqliteReadModel::open(dir.path().join("read.db"))
                .await
                .unwrap(),
        ))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres() {
        let config = "host=127.0.0.1 port=5432 user=postgres dbname=test";
        let client = match tokio_postgres::connect(config, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                client
            }
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("skipping: PostgreSQL at {config} is not reachable ({e})");
                return;
            }
            Err(e) => panic!("PostgreSQL at {config} is needed under CI=true: {e}"),
        };
        // Start from nothing: an earlier run's tables and checkpoint go.
        client
            .batch_execute("DROP SCHEMA IF EXISTS example_bank_account CASCADE")
            .await
            .unwrap();
        let read_model = factum::PgReadModel::connect(config, "example_bank_account")
            .await
            .unwrap();
        scenario(Arc::new(read_model)).await;
    }
}
