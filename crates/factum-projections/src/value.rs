use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::ProjectionError;

/// A parameter of a statement, or a column of a query's row.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer (`BIGINT`; also fits `INTEGER` and `SMALLINT` columns when in range).
    Int(i64),
    /// A float (`DOUBLE PRECISION`).
    Float(f64),
    /// Text (`TEXT`; also `JSON`/`JSONB` and `UUID` columns in PostgreSQL).
    Text(String),
    /// Bytes (`BYTEA`, a blob in SQLite).
    Bytes(Vec<u8>),
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::Int(i64::from(v)) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl Value {
    /// The value as JSON (bytes become an array of numbers).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Text(s) => s.clone().into(),
            Value::Bytes(b) => b.clone().into(),
        }
    }
}

/// One row of a query's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    pub(crate) fn new(columns: Arc<[String]>, values: Vec<Value>) -> Self {
        Row { columns, values }
    }

    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The value of a column by name.
    pub fn get(&self, column: &str) -> Option<&Value> {
        let index = self.columns.iter().position(|c| c == column)?;
        self.values.get(index)
    }

    /// The row as a JSON object, column name → value.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.columns
            .iter()
            .zip(&self.values)
            .map(|(c, v)| (c.clone(), v.to_json()))
            .collect()
    }

    /// The row deserialised into a type: a struct whose fields are the column names, or a
    /// tuple of the columns in order.
    pub fn to<T: DeserializeOwned>(&self) -> Result<T, ProjectionError> {
        serde_json::from_value(serde_json::Value::Object(self.to_json()))
            .or_else(|by_name| {
                let values = self.values.iter().map(Value::to_json).collect();
                serde_json::from_value(serde_json::Value::Array(values)).map_err(|_| by_name)
            })
            .map_err(|e| {
                ProjectionError::invalid(format!("a row does not fit the type asked for: {e}"))
            })
    }
}
