//! Retention, called by the worker: removes what `vitally.record_retention` no longer
//! keeps, a small batch per transaction, so that nothing is locked for long and delivery
//! goes on between batches.
//!
//! Removed once older than the retention: delivered, skipped and invalid records, failed
//! records queued again since (the newer copy tells their story), finished runs (but
//! never a sync's last run, nor one that still has failed records), and the per-minute
//! delivery figures (those kept at least a day, for `vitally.metrics`). Failed records
//! stay until they are retried or their sync is dropped; pending ones are never touched.
//!
//! Old records are found by id: ids follow queueing time, so a bisection over the
//! primary key finds where the recent ones begin. An index on `queued_at` would do it
//! too, but every write of the queue would pay for it (a BRIN index cost 8% of the
//! delivery rate).

use crate::errors::{Result, Row};
use pgrx::spi::SpiClient;

/// Rows removed per table and transaction.
pub const BATCH: i64 = 1000;

/// The lowest record id queued at or after the cutoff (or past the last record), found
/// by bisection: about twenty lookups by primary key. Should a row not follow the order
/// (a pending record replaced later keeps its id), the bound only comes out lower, and
/// what lies beyond it waits for a later pass.
fn first_recent_id(client: &SpiClient<'_>, retention_minutes: i32) -> Result<i64> {
    let bounds = client.select("SELECT pg_catalog.min(id) AS lo, pg_catalog.max(id) + 1 AS hi FROM vitally.record", Some(1), &[])?.first();
    let (Some(mut lo), Some(mut hi)) = (bounds.optional::<i64>("lo")?, bounds.optional::<i64>("hi")?) else {
        return Ok(0);
    };
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let next = client
            .select(
                "SELECT id, queued_at < pg_catalog.now() - pg_catalog.make_interval(mins => $2) AS old FROM vitally.record
                  WHERE id >= $1 ORDER BY id LIMIT 1",
                Some(1),
                &[mid.into(), retention_minutes.into()],
            )?
            .first();
        if !next.is_empty() && next.required::<bool>("old")? {
            lo = next.required::<i64>("id")? + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Removes one batch; returns how many records and runs went (a full batch: call again).
pub fn prune(client: &mut SpiClient<'_>, retention_minutes: i32) -> Result<i64> {
    let bound = first_recent_id(client, retention_minutes)?;
    let removed = client
        .update(
            "WITH cutoff AS (SELECT pg_catalog.now() - pg_catalog.make_interval(mins => $1) AS at),
                  old_records AS (
                      SELECT r.id FROM vitally.record r, cutoff
                       WHERE r.id < $3 AND r.queued_at < cutoff.at
                         AND (r.status IN ('delivered', 'skipped', 'invalid') OR (r.status = 'failed' AND r.replaced_at IS NOT NULL))
                         AND coalesce(r.delivered_at, r.replaced_at, r.queued_at) < cutoff.at
                       LIMIT $2),
                  records AS (DELETE FROM vitally.record r USING old_records o WHERE r.id = o.id RETURNING 1),
                  old_runs AS (
                      SELECT r.id FROM vitally.sync_run r, cutoff
                       WHERE r.status <> 'running' AND r.finished_at < cutoff.at
                         AND r.id < (SELECT pg_catalog.max(l.id) FROM vitally.sync_run l WHERE l.sync_id = r.sync_id)
                         AND NOT EXISTS (SELECT FROM vitally.record f
                                          WHERE f.sync_id = r.sync_id AND f.status = 'failed' AND f.replaced_at IS NULL
                                            AND f.run_id = r.id)
                       LIMIT $2),
                  runs AS (DELETE FROM vitally.sync_run r USING old_runs o WHERE r.id = o.id RETURNING 1),
                  stats AS (DELETE FROM vitally.delivery_stats s USING cutoff
                             WHERE s.minute < least(cutoff.at, pg_catalog.now() - interval '1 day'))
             SELECT (SELECT pg_catalog.count(*) FROM records) + (SELECT pg_catalog.count(*) FROM runs) AS removed",
            None,
            &[retention_minutes.into(), BATCH.into(), bound.into()],
        )?
        .first()
        .required("removed")?;
    Ok(removed)
}
