//! Retention: the worker removes what `vitally.record_retention` no longer keeps, a
//! small batch per transaction, so that nothing is locked for long and delivery goes on
//! between batches.
//!
//! Removed once older than the retention: delivered, skipped and invalid records, failed
//! records queued again since (the newer copy tells their story), finished runs (but
//! never a sync's last run, nor one that still has failed records), and the per-minute
//! delivery figures (those kept at least a day, for `vitally.metrics`). Failed records
//! stay until they are retried or their sync is dropped; pending ones are never touched.

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

/// Rows removed per table and transaction.
pub const BATCH: i64 = 1000;

/// Removes one batch; returns how many records and runs went (a full batch: call again).
pub fn prune(retention_minutes: i32) -> i64 {
    BackgroundWorker::transaction(|| {
        Spi::get_one_with_args::<i64>(
            "WITH cutoff AS (SELECT pg_catalog.now() - pg_catalog.make_interval(mins => $1) AS at),
                  old_records AS (
                      SELECT r.id FROM vitally.record r, cutoff
                       WHERE r.queued_at < cutoff.at
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
             SELECT (SELECT pg_catalog.count(*) FROM records) + (SELECT pg_catalog.count(*) FROM runs)",
            &[retention_minutes.into(), BATCH.into()],
        )
        .unwrap_or_else(|e| panic!("vitally_sync worker: retention: {e}"))
        .unwrap_or(0)
    })
}
