//! Finishing runs: a run is over when none of its records is pending; its status
//! then follows from its figures, and a NOTIFY on channel `vitally_sync` carries its id.

use pgrx::spi::SpiClient;

/// The status rule, in SQL over a `vitally.sync_run` row `r`: nothing went wrong →
/// succeeded; something went wrong and nothing went right → failed; else partially.
pub const STATUS_SQL: &str = "CASE WHEN r.records_failed + r.records_invalid = 0 THEN 'succeeded'
                                  WHEN r.records_delivered + r.records_skipped + r.records_unchanged = 0 THEN 'failed'
                                  ELSE 'partially_failed' END";

/// Finishes those of `run_ids` that have no pending record left. Run as the extension's owner.
pub fn finish_if_done(client: &mut SpiClient<'_>, run_ids: &[i64]) {
    if run_ids.is_empty() {
        return;
    }
    let sql = format!(
        "WITH finished AS (
             UPDATE vitally.sync_run r SET status = {STATUS_SQL}, finished_at = pg_catalog.clock_timestamp()
              WHERE r.id = ANY($1) AND r.status = 'running'
                AND NOT EXISTS (SELECT FROM vitally.record p WHERE p.run_id = r.id AND p.status = 'pending')
             RETURNING r.*)
         -- Only the run's id: any role may LISTEN, and the run's details are in
         -- vitally.sync_runs for those who may see them.
         SELECT pg_catalog.pg_notify('vitally_sync', f.id::pg_catalog.text)
           FROM finished f"
    );
    client.update(&sql, None, &[run_ids.to_vec().into()]).unwrap_or_else(|e| crate::errors::internal(e));
}
