//! DCB queries in SQL: the positions of the events matching a query, from `event_tags` (one
//! row per tag of an event of a user stream, keyed by tag and position) and `events` (indexed
//! by type and position). The reader uses it for reads; the writer for conditions, under the
//! lock on `head`.

use factum_core::{Direction, Query, QueryItem};
use tokio_postgres::types::ToSql;

/// A statement that selects `position` of the events matching a query, with its parameters:
/// `$1` the position after which (exclusive, -1 for the start), `$2` the end (exclusive), `$3`
/// the limit; then each item's tags and types as arrays.
pub(crate) struct QuerySql {
    pub sql: String,
    pub arrays: Vec<Vec<String>>,
    /// `ASC` or `DESC`: the order of the positions, for a statement around this one.
    pub order: &'static str,
}

impl QuerySql {
    pub fn new(query: &Query, direction: Direction) -> QuerySql {
        let order = match direction {
            Direction::Forwards => "ASC",
            Direction::Backwards => "DESC",
        };
        let everything = [QueryItem::default()];
        let items: &[QueryItem] = if query.items.is_empty() {
            &everything
        } else {
            &query.items
        };
        let mut arrays = Vec::new();
        let mut parts = Vec::with_capacity(items.len());
        for item in items {
            parts.push(item_sql(item, order, &mut arrays));
        }
        let sql = format!(
            "SELECT position FROM ({}) q ORDER BY position {order} LIMIT $3",
            parts.join(" UNION ")
        );
        QuerySql { sql, arrays, order }
    }

    /// The parameters after the three fixed ones.
    pub fn params<'a>(&'a self, fixed: [&'a (dyn ToSql + Sync); 3]) -> Vec<&'a (dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = fixed.to_vec();
        for array in &self.arrays {
            params.push(array);
        }
        params
    }
}

/// One item's positions, in order, at most the limit. `arrays` gets its parameters.
fn item_sql(item: &QueryItem, order: &str, arrays: &mut Vec<Vec<String>>) -> String {
    if item.tags.is_empty() {
        let types = if item.types.is_empty() {
            String::new()
        } else {
            let n = 4 + arrays.len();
            arrays.push(item.types.clone());
            format!("type = ANY(${n}::text[]) AND ")
        };
        return format!(
            "(SELECT position FROM events WHERE {types}position > $1 AND position < $2 \
             AND left(stream, 1) <> '$' ORDER BY position {order} LIMIT $3)"
        );
    }
    let n = 4 + arrays.len();
    arrays.push(item.tags.clone());
    let mut sql = String::from("(SELECT t0.position FROM event_tags t0");
    for k in 1..item.tags.len() {
        sql.push_str(&format!(
            " JOIN event_tags t{k} ON t{k}.tag = (${n}::text[])[{}] AND t{k}.position = t0.position",
            k + 1
        ));
    }
    if !item.types.is_empty() {
        let m = 4 + arrays.len();
        arrays.push(item.types.clone());
        sql.push_str(&format!(
            " JOIN events e ON e.position = t0.position AND e.type = ANY(${m}::text[])"
        ));
    }
    sql.push_str(&format!(
        " WHERE t0.tag = (${n}::text[])[1] AND t0.position > $1 AND t0.position < $2 \
         ORDER BY t0.position {order} LIMIT $3)"
    ));
    sql
}
