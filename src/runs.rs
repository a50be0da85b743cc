//! Finishing runs: a run is over when none of its records is pending; its status
//! then follows from its figures.

use pgrx::prelude::*;

/// The status rule, in SQL over a `vitally.sync_run` row `r`: nothing went wrong →
/// succeeded; something went wrong and nothing went right → failed; else partially.
pub const STATUS_SQL: &str = "CASE WHEN r.records_failed + r.records_invalid = 0 THEN 'succeeded'
                                  WHEN r.records_delivered + r.records_skipped + r.records_unchanged = 0 THEN 'failed'
                                  ELSE 'partially_failed' END";

/// Finishes `run_id` if none of its records is pending. Call as the extension's owner.
pub fn finish_if_done(run_id: i64) -> bool {
    let sql = format!(
        "UPDATE vitally.sync_run r SET status = {STATUS_SQL}, finished_at = pg_catalog.clock_timestamp()
          WHERE r.id = $1 AND r.status = 'running'
            AND NOT EXISTS (SELECT FROM vitally.record p WHERE p.run_id = r.id AND p.status = 'pending')
         RETURNING r.id"
    );
    Spi::connect_mut(|client| {
        !client.update(&sql, None, &[run_id.into()]).unwrap_or_else(|e| crate::catalog::internal(e)).is_empty()
    })
}
