//! Runs: started before planning, finished when none of their records is pending (the
//! status follows from their figures, see `statements::FINISH_RUNS`).

use super::statements::FINISH_RUNS;
use crate::errors::{report, Result, Row};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("run {0} does not exist")]
    NoSuchRun(i64),
    #[error("run {0} was started in this transaction")]
    StartedHere(i64),
    #[error("run {run} cannot finish here: {why}")]
    CannotFinish { run: i64, why: String },
}

impl From<RunError> for ErrorReport {
    fn from(e: RunError) -> Self {
        let (code, hint) = match &e {
            RunError::NoSuchRun(_) => {
                (PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, Some("SELECT id, sync_name, status FROM vitally.sync_runs lists the runs of your syncs."))
            }
            RunError::StartedHere(_) => {
                (PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, Some("Commit first: the worker sees the records only after commit."))
            }
            RunError::CannotFinish { .. } => (PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, None),
        };
        report(code, e.to_string(), hint.map(String::from))
    }
}

/// Starts a run of a sync; `planned` when it has nothing to plan (a retry of failed records).
/// `live`: planned by a watch.
pub fn start_run(client: &mut SpiClient<'_>, sync_id: i64, full_resync: bool, planned: bool, live: bool) -> Result<i64> {
    let id = client
        .update(
            "INSERT INTO vitally.sync_run (sync_id, full_resync, planned_at, live)
             VALUES ($1, $2, CASE WHEN $3 THEN pg_catalog.clock_timestamp() END, $4) RETURNING id",
            None,
            &[sync_id.into(), full_resync.into(), planned.into(), live.into()],
        )?
        .first()
        .required("id")?;
    Ok(id)
}

/// Finishes those of `run_ids` that have no pending record left.
pub fn finish_if_done(client: &mut SpiClient<'_>, run_ids: &[i64]) -> Result<()> {
    if !run_ids.is_empty() {
        client.update(FINISH_RUNS, None, &[run_ids.to_vec().into()])?;
    }
    Ok(())
}

/// A run as `vitally.wait` sees it.
pub struct RunStatus {
    pub status: String,
    pub owner: pg_sys::Oid,
    /// Started in the caller's own transaction (its records are not visible to the worker yet).
    pub started_here: bool,
}

pub fn run_status(client: &SpiClient<'_>, run_id: i64) -> Result<Option<RunStatus>> {
    let row = client
        .select(
            "SELECT r.status, s.owner::oid AS owner,
                    coalesce(r.xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned()), false) AS started_here
               FROM vitally.sync_run r JOIN vitally.sync s ON s.id = r.sync_id WHERE r.id = $1",
            Some(1),
            &[run_id.into()],
        )?
        .first();
    if row.is_empty() {
        return Ok(None);
    }
    Ok(Some(RunStatus { status: row.required("status")?, owner: row.required("owner")?, started_here: row.required("started_here")? }))
}

/// Counts again the pending records of every running run, and finishes those with none:
/// when the worker starts on a schema it did not see maintained (an upgrade, or a library
/// older than the schema that ran meanwhile). One pass over the pending records.
pub fn recount_pending(client: &mut SpiClient<'_>) -> Result<()> {
    let runs: Option<Vec<i64>> = client
        .update(
            "WITH c AS (SELECT run_id, pg_catalog.count(*) AS n FROM vitally.record WHERE status = 'pending' GROUP BY run_id),
                  counted AS (
                      UPDATE vitally.sync_run r SET records_pending = coalesce((SELECT c.n FROM c WHERE c.run_id = r.id), 0)
                       WHERE r.status = 'running' RETURNING r.id)
             SELECT pg_catalog.array_agg(id) AS runs FROM counted",
            None,
            &[],
        )?
        .first()
        .optional("runs")?;
    finish_if_done(client, &runs.unwrap_or_default())
}
