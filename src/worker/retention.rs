//! Retention: the worker removes what `vitally.record_retention` no longer keeps, a
//! small batch per transaction, so that nothing is locked for long and delivery goes on
//! between batches.
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

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

/// Rows removed per table and transaction.
pub const BATCH: i64 = 1000;

fn failed(e: pgrx::spi::SpiError) -> ! {
    panic!("vitally_sync worker: retention: {e}")
}

/// The lowest record id queued at or after the cutoff (or past the last record), found
/// by bisection: about twenty lookups by primary key. Should a row not follow the order
/// (a pending record replaced later keeps its id), the bound only comes out lower, and
/// what lies beyond it waits for a later pass.
fn first_recent_id(retention_minutes: i32) -> i64 {
    let (Some(mut lo), Some(mut hi)) =
        Spi::get_two::<i64, i64>("SELECT pg_catalog.min(id), pg_catalog.max(id) + 1 FROM vitally.record").unwrap_or_else(|e| failed(e))
    else {
        return 0;
    };
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let next = Spi::get_two_with_args::<i64, bool>(
            "SELECT id, queued_at < pg_catalog.now() - pg_catalog.make_interval(mins => $2) FROM vitally.record
              WHERE id >= $1 ORDER BY id LIMIT 1",
            &[mid.into(), retention_minutes.into()],
        );
        match next {
            Ok((Some(id), Some(true))) => lo = id + 1,
            _ => hi = mid,
        }
    }
    lo
}

/// Removes one batch; returns how many records and runs went (a full batch: call again).
pub fn prune(retention_minutes: i32) -> i64 {
    BackgroundWorker::transaction(|| {
        let bound = first_recent_id(retention_minutes);
        Spi::get_one_with_args::<i64>(
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
             SELECT (SELECT pg_catalog.count(*) FROM records) + (SELECT pg_catalog.count(*) FROM runs)",
            &[retention_minutes.into(), BATCH.into(), bound.into()],
        )
        .unwrap_or_else(|e| failed(e))
        .unwrap_or(0)
    })
}
