//! Row changes: a projection states which row to insert, upsert, update or delete, and the
//! read model writes the SQL. SQLite runs one statement per change; PostgreSQL folds a run of
//! like changes into one statement over arrays of rows (`unnest`), which is what makes it fast.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};

use crate::sql::check_identifier;
use crate::{ProjectionError, Statement, Value};

/// A column and its value in a [`RowChange`].
pub type Column = (Cow<'static, str>, Value);

/// What a [`RowChange`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowKind {
    /// Inserts a row: its columns are the key and `set` columns. A row with the same key
    /// already there is an error, as with `INSERT`.
    Insert,
    /// Inserts the row, or when a row with the key is there, overwrites its `set` columns and
    /// adds the `add` values to its `add` columns. The key columns must be the table's primary
    /// key or a unique index. With neither `set` nor `add` columns it inserts only when missing.
    Upsert,
    /// Changes the row with the key, if there is one: overwrites `set` columns and adds to
    /// `add` columns.
    Update,
    /// Deletes the row with the key, if there is one.
    Delete,
}

/// One row a projection changes, made with [`Tx::insert`](crate::Tx::insert),
/// [`Tx::upsert`](crate::Tx::upsert), [`Tx::update`](crate::Tx::update) or
/// [`Tx::delete`](crate::Tx::delete).
///
/// ```
/// # mod factum { pub use factum_core::*; pub use factum_projections::*; }
/// # use factum::Tx;
/// let mut tx = Tx::new();
/// tx.upsert("sales").key("sku", "sku-1").add("quantity", 3).set("last_order", "order-9");
/// tx.update("accounts").key("id", "a-1").add("balance", -50);
/// tx.delete("carts").key("id", "cart-7");
/// ```
///
/// Column values are checked when the batch commits: key values must not be `NULL`, `add`
/// values are integers (or `NULL`, which makes the sum `NULL`). A bad change fails the whole
/// batch with [`ProjectionError::Invalid`] and writes nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct RowChange {
    kind: RowKind,
    table: Cow<'static, str>,
    key: Vec<Column>,
    set: Vec<Column>,
    add: Vec<Column>,
}

impl RowChange {
    pub(crate) fn new(kind: RowKind, table: Cow<'static, str>) -> Self {
        RowChange {
            kind,
            table,
            key: Vec::new(),
            set: Vec::new(),
            add: Vec::new(),
        }
    }

    /// A key column: which row. For an insert, a column like any other.
    pub fn key(
        &mut self,
        column: impl Into<Cow<'static, str>>,
        value: impl Into<Value>,
    ) -> &mut Self {
        self.key.push((column.into(), value.into()));
        self
    }

    /// A column set to a value.
    pub fn set(
        &mut self,
        column: impl Into<Cow<'static, str>>,
        value: impl Into<Value>,
    ) -> &mut Self {
        self.set.push((column.into(), value.into()));
        self
    }

    /// A column the value is added to (an integer; subtract with a negative one). When an
    /// upsert inserts the row, the column starts at the value.
    pub fn add(
        &mut self,
        column: impl Into<Cow<'static, str>>,
        value: impl Into<Value>,
    ) -> &mut Self {
        self.add.push((column.into(), value.into()));
        self
    }

    /// What the change does.
    pub fn kind(&self) -> RowKind {
        self.kind
    }

    /// The table, as the projection declares it.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The key columns.
    pub fn key_columns(&self) -> &[Column] {
        &self.key
    }

    /// The columns set.
    pub fn set_columns(&self) -> &[Column] {
        &self.set
    }

    /// The columns added to.
    pub fn add_columns(&self) -> &[Column] {
        &self.add
    }

    /// The values in parameter order: key, then set, then add columns.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Value> {
        self.key
            .iter()
            .chain(&self.set)
            .chain(&self.add)
            .map(|(_, value)| value)
    }

    fn columns(&self) -> impl Iterator<Item = &str> {
        self.key
            .iter()
            .chain(&self.set)
            .chain(&self.add)
            .map(|(column, _)| column.as_ref())
    }

    fn invalid(&self, problem: impl std::fmt::Display) -> ProjectionError {
        ProjectionError::invalid(format!(
            "{:?} into table '{}': {problem}",
            self.kind, self.table
        ))
    }

    /// Checks what every change of the same shape shares: names and which columns are given.
    pub(crate) fn check_shape(&self) -> Result<(), ProjectionError> {
        let mut seen: Vec<&str> = Vec::new();
        for column in self.columns() {
            check_identifier("column name", column)?;
            if seen.contains(&column) {
                return Err(self.invalid(format!("column '{column}' is given twice")));
            }
            seen.push(column);
        }
        let problem = match self.kind {
            RowKind::Insert if !self.add.is_empty() => {
                Some("an insert sets columns; adding needs a row to add to (use upsert)")
            }
            RowKind::Insert if seen.is_empty() => Some("no column given"),
            RowKind::Upsert | RowKind::Update | RowKind::Delete if self.key.is_empty() => {
                Some("no key column given")
            }
            RowKind::Update if self.set.is_empty() && self.add.is_empty() => {
                Some("nothing to change (no set or add column)")
            }
            RowKind::Delete if !self.set.is_empty() || !self.add.is_empty() => {
                Some("a delete takes key columns only")
            }
            _ => None,
        };
        problem.map_or(Ok(()), |problem| Err(self.invalid(problem)))
    }

    /// Checks this change's values: keys are not `NULL`, additions are integers.
    pub(crate) fn check_values(&self) -> Result<(), ProjectionError> {
        if self.kind != RowKind::Insert
            && let Some((column, _)) = self.key.iter().find(|(_, v)| *v == Value::Null)
        {
            return Err(self.invalid(format!("key column '{column}' is NULL")));
        }
        if let Some((column, value)) = self
            .add
            .iter()
            .find(|(_, v)| !matches!(v, Value::Int(_) | Value::Null))
        {
            return Err(self.invalid(format!(
                "column '{column}' adds {value:?}; additions take integers"
            )));
        }
        Ok(())
    }

    /// Whether two changes can share one statement: same kind, table and columns.
    pub(crate) fn same_shape(&self, other: &RowChange) -> bool {
        fn names(a: &[Column], b: &[Column]) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|((x, _), (y, _))| x == y)
        }
        self.kind == other.kind
            && self.table == other.table
            && names(&self.key, &other.key)
            && names(&self.set, &other.set)
            && names(&self.add, &other.add)
    }

    /// The statement for one change, with `{table}` and `$n` parameters in [`values`] order.
    ///
    /// [`values`]: RowChange::values
    pub(crate) fn single_sql(&self) -> String {
        let table = &self.table;
        let mut n = 0;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        let keys: Vec<String> = self
            .key
            .iter()
            .map(|(c, _)| format!("{c} = {}", param()))
            .collect();
        let sets: Vec<String> = self
            .set
            .iter()
            .map(|(c, _)| format!("{c} = {}", param()))
            .collect();
        let adds: Vec<String> = self
            .add
            .iter()
            .map(|(c, _)| format!("{c} = {c} + {}", param()))
            .collect();
        match self.kind {
            RowKind::Insert | RowKind::Upsert => {
                let params: Vec<String> = (1..=self.columns().count())
                    .map(|i| format!("${i}"))
                    .collect();
                format!(
                    "INSERT INTO {{{table}}} AS t0 ({}) VALUES ({}){}",
                    self.columns().collect::<Vec<_>>().join(", "),
                    params.join(", "),
                    self.on_conflict()
                )
            }
            RowKind::Update => format!(
                "UPDATE {{{table}}} SET {} WHERE {}",
                sets.into_iter().chain(adds).collect::<Vec<_>>().join(", "),
                keys.join(" AND ")
            ),
            RowKind::Delete => format!("DELETE FROM {{{table}}} WHERE {}", keys.join(" AND ")),
        }
    }

    fn on_conflict(&self) -> String {
        if self.kind != RowKind::Upsert {
            return String::new();
        }
        let keys: Vec<&str> = self.key.iter().map(|(c, _)| c.as_ref()).collect();
        let changes: Vec<String> = self
            .set
            .iter()
            .map(|(c, _)| format!("{c} = excluded.{c}"))
            .chain(
                self.add
                    .iter()
                    .map(|(c, _)| format!("{c} = t0.{c} + excluded.{c}")),
            )
            .collect();
        if changes.is_empty() {
            format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", "))
        } else {
            format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                keys.join(", "),
                changes.join(", ")
            )
        }
    }

    /// The statement for many changes of this shape at once (PostgreSQL): each parameter is an
    /// array holding one column of every row, cast to `types` (the single-row statement's
    /// parameter types, in [`values`] order).
    ///
    /// [`values`]: RowChange::values
    pub(crate) fn multi_sql(&self, types: &[String]) -> String {
        let table = &self.table;
        let arrays: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, ty)| format!("${}::{ty}[]", i + 1))
            .collect();
        let unnest = format!("unnest({})", arrays.join(", "));
        let aliases: Vec<String> = (1..=types.len()).map(|i| format!("c{i}")).collect();
        let names: Vec<&str> = self.columns().collect();
        let keys = self.key.len();
        let matches: Vec<String> = names[..keys]
            .iter()
            .zip(&aliases)
            .map(|(c, a)| format!("t0.{c} = u.{a}"))
            .collect();
        match self.kind {
            RowKind::Insert | RowKind::Upsert => format!(
                "INSERT INTO {{{table}}} AS t0 ({}) SELECT * FROM {unnest}{}",
                names.join(", "),
                self.on_conflict()
            ),
            RowKind::Update => {
                let sets = self.set.len();
                let changes: Vec<String> = names[keys..]
                    .iter()
                    .zip(&aliases[keys..])
                    .enumerate()
                    .map(|(i, (c, a))| {
                        if i < sets {
                            format!("{c} = u.{a}")
                        } else {
                            format!("{c} = t0.{c} + u.{a}")
                        }
                    })
                    .collect();
                format!(
                    "UPDATE {{{table}}} AS t0 SET {} FROM {unnest} AS u({}) WHERE {}",
                    changes.join(", "),
                    aliases.join(", "),
                    matches.join(" AND ")
                )
            }
            RowKind::Delete => format!(
                "DELETE FROM {{{table}}} AS t0 USING {unnest} AS u({}) WHERE {}",
                aliases.join(", "),
                matches.join(" AND ")
            ),
        }
    }
}

/// A change a projection queued: SQL of its own, or a row change.
#[derive(Clone, Debug, PartialEq)]
pub enum TxChange {
    /// A statement with `{table}` names and `$n` parameters.
    Sql(Statement),
    /// A row to insert, upsert, update or delete.
    Row(RowChange),
}

/// A batch's changes in the order PostgreSQL runs them.
pub(crate) enum Step<'a> {
    /// One statement of the projection's own.
    Sql(&'a Statement),
    /// Row changes of one shape (never empty).
    Rows(Vec<&'a RowChange>),
}

/// Groups a batch's changes into steps. Between two SQL statements of the projection's own,
/// row changes to one table keep their order, split where the shape changes; changes to
/// different tables are independent, so each table's runs are gathered.
pub(crate) fn plan(changes: &[TxChange]) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    let mut runs: Vec<Vec<&RowChange>> = Vec::new();
    let mut last_run: HashMap<&str, usize> = HashMap::new();
    for change in changes {
        match change {
            TxChange::Sql(statement) => {
                last_run.clear();
                steps.extend(runs.drain(..).map(Step::Rows));
                steps.push(Step::Sql(statement));
            }
            TxChange::Row(row) => {
                let run = last_run
                    .get(row.table())
                    .copied()
                    .filter(|&i| runs[i].first().is_some_and(|first| first.same_shape(row)));
                match run {
                    Some(i) => runs[i].push(row),
                    None => {
                        last_run.insert(row.table(), runs.len());
                        runs.push(vec![row]);
                    }
                }
            }
        }
    }
    steps.extend(runs.into_iter().map(Step::Rows));
    steps
}

/// The key values of a change, compared and hashed as the database compares them (floats by
/// their bits).
struct KeyOf<'a>(&'a [Column]);

impl PartialEq for KeyOf<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0)
                .all(|((_, a), (_, b))| match (a, b) {
                    (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
                    _ => a == b,
                })
    }
}

impl Eq for KeyOf<'_> {}

impl Hash for KeyOf<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for (_, value) in self.0 {
            std::mem::discriminant(value).hash(state);
            match value {
                Value::Null => {}
                Value::Bool(b) => b.hash(state),
                Value::Int(i) => i.hash(state),
                Value::Float(f) => f.to_bits().hash(state),
                Value::Text(s) => s.hash(state),
                Value::Bytes(b) => b.hash(state),
            }
        }
    }
}

/// The rows of a run of changes of one shape, as values in [`RowChange::values`] order, after
/// checking the run (names and values): only then may the run's SQL be written. Upserts and
/// updates of the same key are folded into one row: the last `set` values, the sum of the `add`
/// values — what running them one after another leaves.
pub(crate) fn fold(rows: &[&RowChange]) -> Result<Vec<Vec<Value>>, ProjectionError> {
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    first.check_shape()?;
    for row in rows {
        row.check_values()?;
    }
    if !matches!(first.kind, RowKind::Upsert | RowKind::Update) {
        return Ok(rows
            .iter()
            .map(|row| row.values().cloned().collect())
            .collect());
    }
    let (keys, sets) = (first.key.len(), first.set.len());
    let mut at: HashMap<KeyOf<'_>, usize> = HashMap::with_capacity(rows.len());
    let mut out: Vec<Vec<Value>> = Vec::with_capacity(rows.len());
    for row in rows {
        match at.entry(KeyOf(&row.key)) {
            Entry::Vacant(entry) => {
                entry.insert(out.len());
                out.push(row.values().cloned().collect());
            }
            Entry::Occupied(entry) => {
                let merged = &mut out[*entry.get()];
                for (slot, (_, value)) in merged[keys..keys + sets].iter_mut().zip(&row.set) {
                    *slot = value.clone();
                }
                for (slot, (column, value)) in merged[keys + sets..].iter_mut().zip(&row.add) {
                    *slot = match (&*slot, value) {
                        (Value::Int(a), Value::Int(b)) => {
                            Value::Int(a.checked_add(*b).ok_or_else(|| {
                                row.invalid(format!("column '{column}' overflows"))
                            })?)
                        }
                        _ => Value::Null,
                    };
                }
            }
        }
    }
    Ok(out)
}

/// Rows as columns: one array per parameter.
pub(crate) fn columns(rows: Vec<Vec<Value>>, width: usize) -> Vec<Vec<Value>> {
    let mut columns: Vec<Vec<Value>> = (0..width).map(|_| Vec::with_capacity(rows.len())).collect();
    for row in rows {
        for (column, value) in columns.iter_mut().zip(row) {
            column.push(value);
        }
    }
    columns
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Tx;

    #[test]
    fn statements_for_each_kind() {
        let mut tx = Tx::new();
        tx.upsert("sales")
            .key("sku", "a")
            .set("name", "x")
            .add("n", 1);
        tx.upsert("seen").key("id", 1);
        tx.update("sales").key("sku", "a").add("n", 2);
        tx.delete("sales").key("sku", "a");
        tx.insert("log").set("id", 1).set("note", "x");
        let sql: Vec<String> = tx
            .changes()
            .iter()
            .map(|c| match c {
                TxChange::Row(row) => row.single_sql(),
                TxChange::Sql(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            sql,
            [
                "INSERT INTO {sales} AS t0 (sku, name, n) VALUES ($1, $2, $3) \
                 ON CONFLICT (sku) DO UPDATE SET name = excluded.name, n = t0.n + excluded.n",
                "INSERT INTO {seen} AS t0 (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
                "UPDATE {sales} SET n = n + $2 WHERE sku = $1",
                "DELETE FROM {sales} WHERE sku = $1",
                "INSERT INTO {log} AS t0 (id, note) VALUES ($1, $2)",
            ]
        );
        let TxChange::Row(update) = &tx.changes()[2] else {
            unreachable!()
        };
        assert_eq!(
            update.multi_sql(&["text".into(), "int8".into()]),
            "UPDATE {sales} AS t0 SET n = t0.n + u.c2 FROM unnest($1::text[], $2::int8[]) \
             AS u(c1, c2) WHERE t0.sku = u.c1"
        );
    }

    #[test]
    fn runs_keep_each_tables_order_and_break_at_sql() {
        let mut tx = Tx::new();
        tx.upsert("a").key("k", 1).add("n", 1);
        tx.insert("b").set("k", 1);
        tx.upsert("a").key("k", 2).add("n", 1);
        tx.update("a").key("k", 1).add("n", 1);
        tx.upsert("a").key("k", 3).add("n", 1);
        tx.execute("DELETE FROM {b}", []);
        tx.upsert("a").key("k", 4).add("n", 1);
        let shape: Vec<String> = plan(tx.changes())
            .iter()
            .map(|step| match step {
                Step::Sql(_) => "sql".to_owned(),
                Step::Rows(rows) => {
                    format!("{}:{:?}x{}", rows[0].table(), rows[0].kind(), rows.len())
                }
            })
            .collect();
        assert_eq!(
            shape,
            [
                "a:Upsertx2",
                "b:Insertx1",
                "a:Updatex1",
                "a:Upsertx1",
                "sql",
                "a:Upsertx1"
            ]
        );
    }

    #[test]
    fn folding_keeps_the_last_set_and_sums_additions() {
        let mut tx = Tx::new();
        tx.upsert("a").key("k", "x").set("s", "one").add("n", 1);
        tx.upsert("a").key("k", "y").set("s", "two").add("n", 5);
        tx.upsert("a").key("k", "x").set("s", "three").add("n", 2);
        tx.upsert("a")
            .key("k", "x")
            .set("s", "four")
            .add("n", Value::Null);
        let rows: Vec<&RowChange> = tx
            .changes()
            .iter()
            .filter_map(|c| match c {
                TxChange::Row(row) => Some(row),
                TxChange::Sql(_) => None,
            })
            .collect();
        assert_eq!(
            fold(&rows[..3]).unwrap(),
            [
                vec!["x".into(), "three".into(), Value::Int(3)],
                vec!["y".into(), "two".into(), Value::Int(5)]
            ]
        );
        assert_eq!(fold(&rows).unwrap()[0][2], Value::Null);
        let mut tx = Tx::new();
        tx.upsert("a").key("k", 1).add("n", i64::MAX);
        tx.upsert("a").key("k", 1).add("n", 1);
        let rows: Vec<&RowChange> = tx
            .changes()
            .iter()
            .filter_map(|c| match c {
                TxChange::Row(row) => Some(row),
                TxChange::Sql(_) => None,
            })
            .collect();
        assert!(matches!(fold(&rows), Err(ProjectionError::Invalid(m)) if m.contains("overflows")));
    }

    #[test]
    fn bad_shapes_and_values_are_named() {
        let cases: Vec<(RowChange, &str)> = vec![
            (
                {
                    let mut r = RowChange::new(RowKind::Insert, "t".into());
                    r.add("n", 1);
                    r.clone()
                },
                "use upsert",
            ),
            (RowChange::new(RowKind::Upsert, "t".into()), "no key column"),
            (
                {
                    let mut r = RowChange::new(RowKind::Update, "t".into());
                    r.key("k", 1);
                    r.clone()
                },
                "nothing to change",
            ),
            (
                {
                    let mut r = RowChange::new(RowKind::Delete, "t".into());
                    r.key("k", 1).set("s", 1);
                    r.clone()
                },
                "key columns only",
            ),
            (
                {
                    let mut r = RowChange::new(RowKind::Upsert, "t".into());
                    r.key("k", 1).set("k", 2);
                    r.clone()
                },
                "given twice",
            ),
            (
                {
                    let mut r = RowChange::new(RowKind::Upsert, "t".into());
                    r.key("k; drop", 1);
                    r.clone()
                },
                "column name",
            ),
            (
                {
                    let mut r = RowChange::new(RowKind::Upsert, "t".into());
                    r.key("k", Value::Null);
                    r.clone()
                },
                "is NULL",
            ),
            (
                {
                    let mut r = RowChange::new(RowKind::Upsert, "t".into());
                    r.key("k", 1).add("n", "x");
                    r.clone()
                },
                "additions take integers",
            ),
        ];
        for (change, expected) in cases {
            let error = change.check_shape().and_then(|()| change.check_values());
            assert!(
                matches!(&error, Err(ProjectionError::Invalid(m)) if m.contains(expected)),
                "{change:?}: {error:?}"
            );
        }
    }
}
