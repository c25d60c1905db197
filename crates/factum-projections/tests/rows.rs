//! Row changes (insert, upsert, update, delete) against real SQLite files and the real
//! PostgreSQL server: the tables equal a model computed in memory, whatever the batch size, and
//! bad changes write nothing.
#![allow(clippy::unwrap_used, missing_docs)]

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use factum_core::{EventStore, ExpectedState, MemoryStore, NewEvent, RecordedEvent, StreamName};
use factum_projections::{
    ApplyError, Commit, Projection, ProjectionError, ProjectionTarget, Projector, ReadModel,
    RowChange, Table, Tx, TxChange, Value,
};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// What happens in the ledger; every kind of row change, on keys that repeat often.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Fact {
    /// Upsert: set the name, add to the total and count.
    Add {
        id: String,
        amount: i64,
        name: String,
    },
    /// Update: add to the total of an existing row.
    Bump { id: String, amount: i64 },
    /// Update: set the name of an existing row.
    Rename { id: String, name: String },
    /// Delete.
    Remove { id: String },
    /// Set-only upsert on a two-column key, with a value that may be NULL.
    Pair { a: String, b: i64, n: Option<i64> },
    /// Upsert with nothing to change: insert when missing.
    Touch { a: String, b: i64 },
    /// SQL of the projection's own between row changes: doubles a count.
    Double { id: String },
}

struct Ledger;

impl Projection for Ledger {
    fn name(&self) -> &str {
        "ledger"
    }
    fn tables(&self) -> Vec<Table> {
        vec![
            Table::new(
                "balances",
                "id TEXT PRIMARY KEY, name TEXT, total BIGINT NOT NULL, count BIGINT NOT NULL",
            )
            .index("balances_by_total", "total"),
            Table::new(
                "pairs",
                "a TEXT NOT NULL, b BIGINT NOT NULL, n BIGINT, PRIMARY KEY (a, b)",
            ),
            Table::new("facts", "position BIGINT PRIMARY KEY, kind TEXT NOT NULL"),
        ]
    }
    fn apply(&self, tx: &mut Tx, event: &RecordedEvent) -> Result<(), ApplyError> {
        let fact: Fact = serde_json::from_slice(&event.data)?;
        tx.insert("facts")
            .set("position", event.position as i64)
            .set("kind", event.event_type.as_str().to_owned());
        match fact {
            Fact::Add { id, amount, name } => {
                tx.upsert("balances")
                    .key("id", id)
                    .set("name", name)
                    .add("total", amount)
                    .add("count", 1);
            }
            Fact::Bump { id, amount } => {
                tx.update("balances").key("id", id).add("total", amount);
            }
            Fact::Rename { id, name } => {
                tx.update("balances").key("id", id).set("name", name);
            }
            Fact::Remove { id } => {
                tx.delete("balances").key("id", id);
            }
            Fact::Pair { a, b, n } => {
                tx.upsert("pairs").key("a", a).key("b", b).set("n", n);
            }
            Fact::Touch { a, b } => {
                tx.upsert("pairs").key("a", a).key("b", b);
            }
            Fact::Double { id } => tx.execute(
                "UPDATE {balances} SET count = count * 2 WHERE id = $1",
                [id.into()],
            ),
        }
        Ok(())
    }
}

/// The three tables, as rows of text.
#[derive(Debug, Default, PartialEq)]
struct Model {
    balances: BTreeMap<String, (Option<String>, i64, i64)>,
    pairs: BTreeMap<(String, i64), Option<i64>>,
    facts: BTreeMap<i64, String>,
}

fn fold(model: &mut Model, position: u64, fact: &Fact) {
    model.facts.insert(position as i64, kind(fact).to_owned());
    match fact {
        Fact::Add { id, amount, name } => {
            let row = model.balances.entry(id.clone()).or_insert((None, 0, 0));
            row.0 = Some(name.clone());
            row.1 += amount;
            row.2 += 1;
        }
        Fact::Bump { id, amount } => {
            if let Some(row) = model.balances.get_mut(id) {
                row.1 += amount;
            }
        }
        Fact::Rename { id, name } => {
            if let Some(row) = model.balances.get_mut(id) {
                row.0 = Some(name.clone());
            }
        }
        Fact::Remove { id } => {
            model.balances.remove(id);
        }
        Fact::Pair { a, b, n } => {
            model.pairs.insert((a.clone(), *b), *n);
        }
        Fact::Touch { a, b } => {
            model.pairs.entry((a.clone(), *b)).or_insert(None);
        }
        Fact::Double { id } => {
            if let Some(row) = model.balances.get_mut(id) {
                row.2 *= 2;
            }
        }
    }
}

fn kind(fact: &Fact) -> &'static str {
    match fact {
        Fact::Add { .. } => "Add",
        Fact::Bump { .. } => "Bump",
        Fact::Rename { .. } => "Rename",
        Fact::Remove { .. } => "Remove",
        Fact::Pair { .. } => "Pair",
        Fact::Touch { .. } => "Touch",
        Fact::Double { .. } => "Double",
    }
}

fn random_fact(rng: &mut impl Rng) -> Fact {
    let id = format!("k{}", rng.random_range(0..6));
    let a = format!("p{}", rng.random_range(0..3));
    let b = rng.random_range(0..3);
    match rng.random_range(0..14) {
        0..=4 => Fact::Add {
            id,
            amount: rng.random_range(-50..100),
            name: format!("name {}", rng.random_range(0..1000)),
        },
        5..=6 => Fact::Bump {
            id,
            amount: rng.random_range(-50..100),
        },
        7 => Fact::Rename {
            id,
            name: format!("renamed {}", rng.random_range(0..1000)),
        },
        8 => Fact::Remove { id },
        9..=10 => Fact::Pair {
            a,
            b,
            n: rng.random_bool(0.7).then(|| rng.random_range(0..100)),
        },
        11..=12 => Fact::Touch { a, b },
        _ => Fact::Double { id },
    }
}

/// Appends `count` random facts; returns the model they make.
async fn append_facts(store: &dyn EventStore, count: usize, seed: u64) -> Model {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let stream = StreamName::user("ledger-1").unwrap();
    let facts: Vec<Fact> = (0..count).map(|_| random_fact(&mut rng)).collect();
    for chunk in facts.chunks(50) {
        let events = chunk
            .iter()
            .map(|fact| NewEvent::json(kind(fact), fact).unwrap())
            .collect();
        store
            .append(&stream, ExpectedState::Any, events)
            .await
            .unwrap();
    }
    model_of(store).await
}

async fn model_of(store: &dyn EventStore) -> Model {
    let mut model = Model::default();
    for event in common::all_events(store).await {
        let fact: Fact = serde_json::from_slice(&event.data).unwrap();
        fold(&mut model, event.position, &fact);
    }
    model
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Text(s) => Some(s.clone()),
        Value::Null => None,
        other => panic!("not text: {other:?}"),
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        Value::Null => None,
        other => panic!("not an integer: {other:?}"),
    }
}

async fn actual(read_model: &dyn ReadModel) -> Model {
    let mut model = Model::default();
    for row in read_model
        .query("SELECT id, name, total, count FROM balances", &[])
        .await
        .unwrap()
    {
        let v = row.values();
        model.balances.insert(
            text(&v[0]).unwrap(),
            (text(&v[1]), int(&v[2]).unwrap(), int(&v[3]).unwrap()),
        );
    }
    for row in read_model
        .query("SELECT a, b, n FROM pairs", &[])
        .await
        .unwrap()
    {
        let v = row.values();
        model
            .pairs
            .insert((text(&v[0]).unwrap(), int(&v[1]).unwrap()), int(&v[2]));
    }
    for row in read_model
        .query("SELECT position, kind FROM facts", &[])
        .await
        .unwrap()
    {
        let v = row.values();
        model
            .facts
            .insert(int(&v[0]).unwrap(), text(&v[1]).unwrap());
    }
    model
}

on_both!(row_changes_equal_the_model_at_any_batch_size);
async fn row_changes_equal_the_model_at_any_batch_size(read_model: Arc<dyn ReadModel>) {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let model = append_facts(&*store, 1500, 7).await;
    assert!(model.balances.len() > 1 && !model.pairs.is_empty());

    // Large batches: many changes of a key in one batch, folded into one statement.
    let projector = Projector::new(store.clone(), read_model.clone(), Ledger).batch_size(500);
    projector.run_until(store.head()).await.unwrap();
    assert_eq!(actual(&*read_model).await, model);

    // A rebuild in batches of one and of three: statements per row, small runs.
    for batch in [1, 3] {
        let projector = Projector::new(store.clone(), read_model.clone(), Ledger).batch_size(batch);
        projector.rebuild(|_| {}).await.unwrap();
        assert_eq!(actual(&*read_model).await, model, "batches of {batch}");
    }

    // And live again, on top of what is there.
    let model = append_facts(&*store, 700, 8).await;
    Projector::new(store.clone(), read_model.clone(), Ledger)
        .batch_size(250)
        .run_until(store.head())
        .await
        .unwrap();
    assert_eq!(actual(&*read_model).await, model);
}

fn row(kind: &str, build: impl FnOnce(&mut RowChange)) -> TxChange {
    let mut tx = Tx::new();
    let change = match kind {
        "insert" => tx.insert("balances"),
        "upsert" => tx.upsert("balances"),
        "update" => tx.update("balances"),
        _ => tx.delete("balances"),
    };
    build(change);
    tx.into_changes().remove(0)
}

on_both!(bad_row_changes_write_nothing);
async fn bad_row_changes_write_nothing(read_model: Arc<dyn ReadModel>) {
    let tables = Ledger.tables();
    read_model.install("ledger", 1, &tables).await.unwrap();
    let good = || {
        row("upsert", |r| {
            r.key("id", "a")
                .set("name", "x")
                .add("total", 1)
                .add("count", 1);
        })
    };
    let mut undeclared = Tx::new();
    undeclared
        .upsert("elsewhere")
        .key("id", "a")
        .add("total", 1);
    let cases: Vec<(Vec<TxChange>, &str)> = vec![
        (
            vec![row("upsert", |r| {
                r.key("id", Value::Null).add("total", 1);
            })],
            "is NULL",
        ),
        (
            vec![row("upsert", |r| {
                r.key("id", "a").add("total", "ten");
            })],
            "additions take integers",
        ),
        (
            vec![row("upsert", |r| {
                r.key("id", "a").add("total", 1.5);
            })],
            "additions take integers",
        ),
        (
            vec![row("insert", |r| {
                r.set("id", "a").add("total", 1);
            })],
            "use upsert",
        ),
        (
            vec![row("update", |r| {
                r.key("id", "a");
            })],
            "nothing to change",
        ),
        (
            vec![row("delete", |r| {
                r.key("id", "a").set("name", "x");
            })],
            "key columns only",
        ),
        (
            vec![row("upsert", |r| {
                r.key("id", "a").set("name; DROP TABLE balances", "x");
            })],
            "column name",
        ),
        (
            vec![row("upsert", |r| {
                r.key("id", "a").set("total", 1).add("total", 1);
            })],
            "given twice",
        ),
        (undeclared.into_changes(), "does not declare"),
        (
            vec![
                row("upsert", |r| {
                    r.key("id", "a")
                        .add("total", i64::MAX)
                        .add("count", 1)
                        .set("name", "x");
                }),
                row("upsert", |r| {
                    r.key("id", "a")
                        .add("total", 1)
                        .add("count", 1)
                        .set("name", "x");
                }),
            ],
            "overflows",
        ),
    ];
    for (bad, expected) in cases {
        // A good change first, then the bad one: the batch writes nothing at all.
        let mut changes = vec![good(), good()];
        changes.extend(bad);
        let error = read_model
            .commit(Commit {
                projection: "ledger".into(),
                target: ProjectionTarget::Live,
                expected: None,
                position: 0,
                recorded_at_us: 0,
                head: 1,
                changes,
            })
            .await
            .unwrap_err();
        if expected.is_empty() {
            // The overflow: named by the folding (PostgreSQL) or by the database (SQLite).
            assert!(
                matches!(
                    error,
                    ProjectionError::Invalid(_) | ProjectionError::Sqlite(_)
                ),
                "{error}"
            );
        } else {
            assert!(
                matches!(&error, ProjectionError::Invalid(m) if m.contains(expected)),
                "expected '{expected}': {error}"
            );
        }
        assert_eq!(actual(&*read_model).await, Model::default());
        assert_eq!(read_model.state("ledger").await.unwrap().position, None);
    }
}
