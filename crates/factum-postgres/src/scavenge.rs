//! Scavenging the PostgreSQL store: the events their stream's metadata hides for good are
//! deleted, stream by stream, in batches of their own short transactions, so no lock is held
//! for long and appends and reads go on. Positions stay taken; reads of `$all` step over the
//! gaps (they read `position >= from … LIMIT n`, so pages stay full), and stream reads read by
//! revision the same way.

use factum_core::{ScavengeOptions, ScavengeReport, StoreError, StreamMetadata, hidden_rule};
use tokio_postgres::Client;

use crate::conn::{Target, unavailable};
use crate::writer::{to_i64, to_u64};

/// Events one statement deletes at most.
const BATCH_EVENTS: i64 = 5_000;
/// Streams read at a time.
const STREAMS_PAGE: i64 = 1_000;

/// Deletes up to `$6` events of stream `$1` below revision `$2` (its newest) and position `$3`
/// that are below revision `$4` or recorded before `$5`, with their tag rows, and notes on the
/// stream's row how far its revisions may have gaps; counts them.
const DELETE_BATCH: &str = "WITH gone AS (
    DELETE FROM events WHERE position IN (
        SELECT position FROM events
        WHERE stream = $1 AND revision < $2 AND position < $3
          AND (revision < $4 OR recorded_at_us < $5)
        LIMIT $6)
    RETURNING position, revision, tags
), untagged AS (
    DELETE FROM event_tags t USING gone WHERE t.position = gone.position AND t.tag = ANY(gone.tags)
), marked AS (
    UPDATE streams SET scavenged_below = GREATEST(scavenged_below, (SELECT max(revision) + 1 FROM gone))
    WHERE name = $1 AND EXISTS (SELECT 1 FROM gone)
)
SELECT count(*) FROM gone";

async fn table_bytes(client: &Client) -> Result<u64, StoreError> {
    let row = client
        .query_one(
            "SELECT (pg_total_relation_size('events') + pg_total_relation_size('event_tags'))::bigint",
            &[],
        )
        .await
        .map_err(unavailable)?;
    Ok(to_u64(row.get(0)))
}

pub(crate) async fn scavenge(
    target: &Target,
    options: &ScavengeOptions,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<ScavengeReport, StoreError> {
    let client = target.connect().await?;
    // One scavenge at a time per schema: a second one is told so at once.
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext(current_schema() || '.factum-scavenge'))",
            &[],
        )
        .await
        .map_err(unavailable)?
        .get(0);
    if !locked {
        return Err(StoreError::Busy(
            "a scavenge of this store is already running".into(),
        ));
    }
    let now = factum_core::now_micros();
    let bound = options.below.map_or(i64::MAX, to_i64);
    let mut report = ScavengeReport {
        below: options.below,
        bytes_before: table_bytes(&client).await?,
        ..ScavengeReport::default()
    };
    let total: i64 = client
        .query_one("SELECT count(*) FROM streams", &[])
        .await
        .map_err(unavailable)?
        .get(0);
    let total = to_u64(total);
    let delete = client.prepare(DELETE_BATCH).await.map_err(unavailable)?;
    let mut after = String::new();
    let mut done = 0u64;
    progress(0, total);
    loop {
        let rows = client
            .query(
                "SELECT name, next_revision, deleted_before, tombstoned, metadata FROM streams
                 WHERE name > $1 ORDER BY name LIMIT $2",
                &[&after, &STREAMS_PAGE],
            )
            .await
            .map_err(unavailable)?;
        let Some(last) = rows.last() else { break };
        after = last.get(0);
        for row in &rows {
            let name: String = row.get(0);
            let len = to_u64(row.get(1));
            let metadata = match row.get::<_, Option<String>>(4) {
                Some(json) => Some(serde_json::from_str::<StreamMetadata>(&json).map_err(|e| {
                    StoreError::invalid(format!("metadata of '{name}' does not parse: {e}"))
                })?),
                None => None,
            };
            report.events_examined += len;
            let Some(rule) = hidden_rule(
                &name,
                len,
                to_u64(row.get(2)),
                row.get(3),
                metadata.as_ref(),
                now,
            ) else {
                continue;
            };
            let recorded_before = rule.recorded_before_us.map_or(i64::MIN, to_i64);
            loop {
                let row = client
                    .query_one(
                        &delete,
                        &[
                            &name,
                            &to_i64(rule.newest),
                            &bound,
                            &to_i64(rule.below_revision),
                            &recorded_before,
                            &BATCH_EVENTS,
                        ],
                    )
                    .await
                    .map_err(unavailable)?;
                let deleted: i64 = row.get(0);
                if deleted > 0 {
                    report.events_removed += to_u64(deleted);
                    report.segments_rewritten += 1;
                }
                if deleted < BATCH_EVENTS {
                    break;
                }
            }
        }
        done += rows.len() as u64;
        progress(done.min(total), total);
    }
    if report.events_removed > 0 {
        // The deleted rows' space becomes reusable; VACUUM takes no lock that blocks reads or
        // writes.
        for table in ["events", "event_tags"] {
            client
                .batch_execute(&format!("VACUUM (ANALYZE) {table}"))
                .await
                .map_err(unavailable)?;
        }
    }
    report.bytes_after = table_bytes(&client).await?;
    progress(total, total);
    Ok(report)
}

/// What a verification of the PostgreSQL store read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgVerifyReport {
    /// Events read.
    pub events: u64,
    /// Streams that hold them.
    pub streams: u64,
    /// Bytes of data and metadata read.
    pub bytes: u64,
    /// Positions whose events a scavenge removed.
    pub removed: u64,
}

/// Reads every event below `head` in position order and checks the log's shape: positions
/// increase, each stream's revisions increase by one except where a scavenge removed events
/// (below the stream's `scavenged_below`), each stream ends at its newest revision, and every
/// position missing is one of those removed events.
pub(crate) async fn verify(
    target: &Target,
    head: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PgVerifyReport, StoreError> {
    let client = target.connect().await?;
    // (next revision, scavenged below, next revision seen)
    let mut streams: std::collections::HashMap<String, (u64, u64, u64)> = client
        .query(
            "SELECT name, next_revision, scavenged_below FROM streams",
            &[],
        )
        .await
        .map_err(unavailable)?
        .iter()
        .map(|row| {
            (
                row.get::<_, String>(0),
                (to_u64(row.get(1)), to_u64(row.get(2)), 0),
            )
        })
        .collect();
    let corrupted = |position: u64, reason: String| StoreError::Corrupted {
        file: std::path::PathBuf::from("postgresql:events"),
        offset: position,
        reason,
    };
    let mut report = PgVerifyReport::default();
    let mut next = 0i64;
    let end = to_i64(head);
    loop {
        let rows = client
            .query(
                "SELECT position, stream, revision, length(data) + length(metadata) FROM events
                 WHERE position >= $1 AND position < $2 ORDER BY position LIMIT 4096",
                &[&next, &end],
            )
            .await
            .map_err(unavailable)?;
        let Some(last) = rows.last() else { break };
        next = last.get::<_, i64>(0) + 1;
        for row in &rows {
            let position = to_u64(row.get(0));
            let stream: String = row.get(1);
            let revision = to_u64(row.get(2));
            let Some((_, scavenged_below, seen)) = streams.get_mut(&stream) else {
                return Err(corrupted(position, format!("stream '{stream}' has no row")));
            };
            if revision < *seen || (revision > *seen && revision > *scavenged_below) {
                return Err(corrupted(
                    position,
                    format!(
                        "stream '{stream}' jumps from revision {} to {revision}, and no scavenge removed events there",
                        seen.wrapping_sub(1) as i64
                    ),
                ));
            }
            *seen = revision + 1;
            report.events += 1;
            report.bytes += to_u64(row.get::<_, i32>(3).into());
        }
        progress(next as u64, head);
    }
    let mut missing = 0u64;
    for (stream, (next_revision, _, seen)) in &streams {
        if *seen == 0 && *next_revision == 0 {
            continue;
        }
        if seen != next_revision {
            return Err(corrupted(
                head,
                format!(
                    "stream '{stream}' ends at revision {next_revision} but its events end at {seen}"
                ),
            ));
        }
        report.streams += 1;
        missing += next_revision;
    }
    missing = missing.saturating_sub(report.events);
    report.removed = head - report.events;
    if missing != report.removed {
        return Err(corrupted(
            head,
            format!(
                "{} positions hold no event, but scavenges removed {missing} events",
                report.removed
            ),
        ));
    }
    progress(head, head);
    Ok(report)
}
