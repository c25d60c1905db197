//! The store's tables, created and migrated by the store itself in its own schema. Each
//! migration runs once, in order, under an advisory lock, so that processes starting together
//! do not race; the schema records its version.

use factum_core::StoreError;
use tokio_postgres::Client;

use crate::conn::unavailable;

/// The migrations, in order: migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
-- Every event, by its position in $all. A position is taken under the lock on `head` and
-- committed before the next writer can take one, so positions become visible in order.
CREATE TABLE events (
    position       bigint   PRIMARY KEY,
    stream         text     COLLATE "C" NOT NULL,
    revision       bigint   NOT NULL,
    id             uuid     NOT NULL,
    type           text     NOT NULL,
    content_type   smallint NOT NULL,
    data           bytea    NOT NULL,
    metadata       bytea    NOT NULL,
    recorded_at_us bigint   NOT NULL,
    UNIQUE (stream, revision)
);
-- What the write rules need to know of each stream without reading its events.
CREATE TABLE streams (
    name           text    COLLATE "C" PRIMARY KEY,
    next_revision  bigint  NOT NULL,
    deleted_before bigint  NOT NULL,
    tombstoned     boolean NOT NULL,
    last_id        uuid,
    last_position  bigint,
    metadata       text
);
CREATE TABLE checkpoints (
    consumer text   COLLATE "C" PRIMARY KEY,
    position bigint NOT NULL
);
-- The position the next event gets; writers lock this one row.
CREATE TABLE head (
    one           boolean PRIMARY KEY DEFAULT true CHECK (one),
    next_position bigint  NOT NULL
);
INSERT INTO head (next_position) VALUES (0);
"#,
    r#"
-- Tags for dynamic consistency boundaries: each event's own, and, for events of user streams,
-- one row per tag, so that a DCB read or condition finds the positions of a tag in order.
ALTER TABLE events ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
CREATE TABLE event_tags (
    tag      text   COLLATE "C" NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (tag, position)
);
-- DCB query items that name types and no tag.
CREATE INDEX events_type_position ON events (type, position);
"#,
    r#"
-- Scavenging: revisions of a stream below this may have been removed (their positions stay
-- taken), so that verification tells a scavenged gap from a lost event.
ALTER TABLE streams ADD COLUMN scavenged_below bigint NOT NULL DEFAULT 0;
-- Keys for personal data, one per subject, apart from the events: deleting a row forgets the
-- subject (crypto-shredding).
CREATE TABLE subject_keys (
    subject text  COLLATE "C" PRIMARY KEY,
    key     bytea NOT NULL
);
"#,
];

/// The schema version this build writes.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Checks a schema name: lower-case letters, digits and `_`, starting with a letter or `_`, at
/// most 40 characters (so that the notification channel's name fits PostgreSQL's limit).
pub fn check_name(schema: &str) -> Result<(), StoreError> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && schema.len() <= 40 {
        Ok(())
    } else {
        Err(StoreError::invalid(format!(
            "schema name '{schema}' must be 1 to 40 lower-case letters, digits or '_', not starting with a digit"
        )))
    }
}

/// Creates the schema or brings it up to [`VERSION`]. A schema written by a newer build is
/// refused.
pub async fn migrate(client: &mut Client, schema: &str) -> Result<i32, StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('factum schema ' || $1::text))",
        &[&schema],
    )
    .await
    .map_err(unavailable)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (version integer NOT NULL)"
    ))
    .await
    .map_err(unavailable)?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_version"),
            &[],
        )
        .await
        .map_err(unavailable)?;
    let current: i32 = row.get(0);
    if current > VERSION {
        return Err(StoreError::invalid(format!(
            "the schema '{schema}' is at version {current}, newer than this build of factum knows ({VERSION}); upgrade factum"
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(&format!("SET LOCAL search_path TO {schema}; {migration}"))
            .await
            .map_err(unavailable)?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_version (version) VALUES ($1)"),
            &[&(index as i32 + 1)],
        )
        .await
        .map_err(unavailable)?;
        tracing::info!(
            schema,
            version = index + 1,
            "migrated the event store schema"
        );
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(VERSION)
}
