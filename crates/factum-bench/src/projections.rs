//! Projection scenarios of `factum bench`, each on a fresh embedded store of its own:
//!
//! - `project`: 1,000,000 order lines projected into a sales-per-SKU table, live from an
//!   empty checkpoint, into SQLite and into PostgreSQL — once with the upsert stated as a row
//!   change (`project`), once as SQL of the projection's own (`project-sql`); then a rebuild of
//!   the row-change form into SQLite (shadow tables and swap). Latency is the time per 10,000
//!   events.
//! - `project-e2e`: a command executed through the repository while a projector follows live
//!   into SQLite; latency is from the command being accepted (durable) until a query that
//!   waits for its position sees the row.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use factum::{
    ApplyError, CommandContext, Decider, Engine, EngineOptions, EventStore, PgReadModel,
    Projection, Projector, ReadModel, RecordedEvent, Repository, SqliteReadModel, Table, Tx, Value,
};
use serde::Deserialize;

use crate::kit::{Payloads, Row, bar, row, timed};

/// The fields of a bench payload this projection reads.
#[derive(Deserialize)]
struct OrderLine<'a> {
    sku: &'a str,
    quantity: i64,
    unit_price_cents: i64,
}

/// Sales per SKU: one upsert per order line, stated as a row change (`rows`) or as SQL of the
/// projection's own. Each form has its own table.
struct Sales {
    rows: bool,
}

impl Sales {
    fn table(&self) -> &'static str {
        if self.rows { "sales" } else { "sales_sql" }
    }
}

impl Projection for Sales {
    fn name(&self) -> &str {
        self.table()
    }
    fn tables(&self) -> Vec<Table> {
        vec![
            Table::new(
                self.table(),
                "sku TEXT PRIMARY KEY, quantity BIGINT NOT NULL, revenue_cents BIGINT NOT NULL",
            )
            .index(format!("{}_by_revenue", self.table()), "revenue_cents"),
        ]
    }
    fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ApplyError> {
        let line: OrderLine = serde_json::from_slice(&event.data)?;
        let revenue = line.quantity * line.unit_price_cents;
        if self.rows {
            tx.upsert("sales")
                .key("sku", line.sku)
                .add("quantity", line.quantity)
                .add("revenue_cents", revenue);
        } else {
            tx.execute(
                "INSERT INTO {sales_sql} (sku, quantity, revenue_cents) VALUES ($1, $2, $3) \
                 ON CONFLICT (sku) DO UPDATE SET quantity = {sales_sql}.quantity + excluded.quantity, \
                 revenue_cents = {sales_sql}.revenue_cents + excluded.revenue_cents",
                [
                    Value::from(line.sku),
                    Value::Int(line.quantity),
                    Value::Int(revenue),
                ],
            );
        }
        Ok(())
    }
}

pub async fn run(
    scenario: &str,
    work: &Path,
    postgres: &str,
    payloads: &Payloads,
) -> Result<Vec<Row>> {
    let dir = tempfile::Builder::new()
        .prefix("projections-")
        .tempdir_in(work)?;
    let engine = Engine::open(dir.path().join("store"), EngineOptions::default())?;
    let rows = match scenario {
        "project" => project(&engine, dir.path(), postgres, payloads).await,
        _ => end_to_end(&engine, dir.path()).await,
    };
    engine.close()?;
    rows
}

async fn project(
    engine: &Engine,
    dir: &Path,
    postgres: &str,
    payloads: &Payloads,
) -> Result<Vec<Row>> {
    const EVENTS: u64 = 1_000_000;
    crate::toolkit::fill(
        engine,
        |chunk| Ok(factum::StreamName::user(format!("order-{chunk}"))?),
        EVENTS,
        payloads,
    )
    .await?;
    let store: Arc<dyn EventStore> = Arc::new(engine.clone());
    let mut rows = Vec::new();

    let sqlite: Arc<dyn ReadModel> = Arc::new(SqliteReadModel::open(dir.join("read.db")).await?);
    let mut read_models = vec![("sqlite", sqlite.clone())];
    match pg(postgres).await {
        Ok(pg) => read_models.push(("postgres", pg)),
        Err(e) => eprintln!("skipping project on postgres: {e:#}"),
    }
    for (name, read_model) in read_models {
        for rows_form in [true, false] {
            let sales = Sales { rows: rows_form };
            let table = sales.table();
            let projector = Projector::new(store.clone(), read_model.clone(), sales);
            projector.install().await?;
            let watched = read_model.clone();
            let position = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let seen = position.clone();
            let mut committed = watched.committed();
            let follow = tokio::spawn(async move {
                while committed.changed().await.is_ok() {
                    if let Ok(state) = watched.state(table).await {
                        seen.store(state.next_position(), std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
            let form = if rows_form {
                "row changes"
            } else {
                "SQL statements"
            };
            let (elapsed, latencies) = timed(
                &format!("project {name} ({form})"),
                EVENTS,
                async {
                    let stats = projector.run_until(EVENTS).await?;
                    ensure!(stats.events == EVENTS, "projected {} events", stats.events);
                    Ok(())
                },
                || position.load(std::sync::atomic::Ordering::Relaxed),
            )
            .await?;
            follow.abort();
            check_totals(&*read_model, table, payloads, EVENTS).await?;
            let scenario = if rows_form { "project" } else { "project-sql" };
            rows.push(row(scenario, name, EVENTS, elapsed, latencies));
        }
    }

    let projector = Projector::new(store.clone(), sqlite.clone(), Sales { rows: true });
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reported = done.clone();
    let (elapsed, latencies) = timed(
        "rebuild sqlite",
        EVENTS,
        async {
            let stats = projector
                .rebuild(|progress| {
                    reported.store(progress.events, std::sync::atomic::Ordering::Relaxed)
                })
                .await?;
            ensure!(
                stats.events == EVENTS,
                "rebuilt from {} events",
                stats.events
            );
            Ok(())
        },
        || done.load(std::sync::atomic::Ordering::Relaxed),
    )
    .await?;
    check_totals(&*sqlite, "sales", payloads, EVENTS).await?;
    rows.push(row("rebuild", "sqlite", EVENTS, elapsed, latencies));
    Ok(rows)
}

/// A PostgreSQL read model in the schema `factum_bench`, emptied first.
async fn pg(config: &str) -> Result<Arc<dyn ReadModel>> {
    crate::kit::pg_client(config)
        .await?
        .batch_execute(
            "DROP SCHEMA IF EXISTS factum_bench CASCADE; \
             DROP SCHEMA IF EXISTS factum_bench__rebuild CASCADE",
        )
        .await?;
    Ok(Arc::new(
        PgReadModel::connect(config, "factum_bench").await?,
    ))
}

/// The projected totals equal those computed from the payloads.
async fn check_totals(
    read_model: &dyn ReadModel,
    table: &str,
    payloads: &Payloads,
    events: u64,
) -> Result<()> {
    let mut quantity = 0i64;
    for n in 0..events {
        let payload = payloads.get(n);
        let line: OrderLine = serde_json::from_str(&payload)?;
        quantity += line.quantity;
    }
    let rows = read_model
        .query(
            &format!("SELECT CAST(SUM(quantity) AS BIGINT) AS q FROM {table}"),
            &[],
        )
        .await?;
    let projected = rows.first().and_then(|r| r.get("q").cloned());
    ensure!(
        projected == Some(Value::Int(quantity)),
        "the read model holds {projected:?} units sold, the events {quantity}"
    );
    Ok(())
}

/// Accounts that take deposits; the projection keeps their balances.
struct Accounts;

#[derive(serde::Serialize, Deserialize)]
enum AccountEvent {
    Deposited { cents: i64 },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Decider for Accounts {
    type State = i64;
    type Command = i64;
    type Event = AccountEvent;
    type Error = Never;
    const CATEGORY: &'static str = "account";
    fn initial_state(&self) -> i64 {
        0
    }
    fn decide(&self, _: &i64, cents: &i64) -> Result<Vec<AccountEvent>, Never> {
        Ok(vec![AccountEvent::Deposited { cents: *cents }])
    }
    fn evolve(&self, balance: i64, event: &AccountEvent) -> i64 {
        match event {
            AccountEvent::Deposited { cents } => balance + cents,
        }
    }
}

struct Balances;

impl Projection for Balances {
    fn name(&self) -> &str {
        "balances"
    }
    fn tables(&self) -> Vec<Table> {
        vec![Table::new(
            "balances",
            "id TEXT PRIMARY KEY, balance BIGINT NOT NULL",
        )]
    }
    fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ApplyError> {
        #[derive(Deserialize)]
        struct Deposited {
            cents: i64,
        }
        let deposited: Deposited = serde_json::from_slice(&event.data)?;
        tx.execute(
            "INSERT INTO {balances} (id, balance) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET balance = {balances}.balance + excluded.balance",
            [
                Value::from(event.stream.as_str()),
                Value::Int(deposited.cents),
            ],
        );
        Ok(())
    }
}

async fn end_to_end(engine: &Engine, dir: &Path) -> Result<Vec<Row>> {
    const COMMANDS: u64 = 3_000;
    let store: Arc<dyn EventStore> = Arc::new(engine.clone());
    let read_model: Arc<dyn ReadModel> = Arc::new(SqliteReadModel::open(dir.join("e2e.db")).await?);
    let projector = Projector::new(store.clone(), read_model.clone(), Balances);
    projector.install().await?;
    let running = projector.spawn();
    let repository = Repository::new(store, Accounts);
    let context = CommandContext::new();
    let progress = bar(COMMANDS, "command → row sqlite".into());
    let mut latencies = Vec::with_capacity(COMMANDS as usize);
    let started = Instant::now();
    for n in 0..COMMANDS {
        let id = format!("{}", n % 100);
        let done = repository.execute(&id, 1 + n as i64, &context).await?;
        let accepted = Instant::now();
        let position = done.position.unwrap_or_default();
        read_model
            .wait_for("balances", position, Duration::from_secs(5))
            .await?;
        let rows = read_model
            .query(
                "SELECT balance FROM balances WHERE id = $1",
                &[Value::from(format!("account-{id}"))],
            )
            .await?;
        ensure!(!rows.is_empty(), "the row of account {id} is not there");
        latencies.push(accepted.elapsed().as_micros() as u64);
        progress.inc(1);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    running.stop().await?;
    Ok(vec![row("cmd→row", "sqlite", COMMANDS, elapsed, latencies)])
}
