//! Syncs run on a schedule by pg_cron: one job per sync, named `vitally:<sync>`, run as
//! the sync's owner (never with more privileges than the owner has).
//!
//! pg_cron is optional, so nothing here names its objects statically: its schema is
//! looked up when needed, and a missing pg_cron is a clear error, not a failed install.

use crate::errors::{report, Result, Row};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// pg_cron's job names are of type `name`: at most 63 bytes.
const MAX_JOB_NAME: usize = 63;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("pg_cron is not installed in database \"{0}\"")]
    CronMissing(String),
    #[error("sync name \"{0}\" is too long to schedule: pg_cron job names hold {MAX_JOB_NAME} bytes")]
    NameTooLong(String),
}

impl From<ScheduleError> for ErrorReport {
    fn from(e: ScheduleError) -> Self {
        let (code, hint) = match &e {
            ScheduleError::CronMissing(db) => (
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "In postgresql.conf add pg_cron to shared_preload_libraries and set cron.database_name = '{db}', restart the server, \
                     then CREATE EXTENSION pg_cron; or call SELECT vitally.sync(...) from any other scheduler."
                ),
            ),
            ScheduleError::NameTooLong(_) => {
                (PgSqlErrorCode::ERRCODE_NAME_TOO_LONG, format!("Use a sync name of at most {} bytes.", MAX_JOB_NAME - job_name("").len()))
            }
        };
        report(code, e.to_string(), Some(hint))
    }
}

pub fn job_name(sync: &str) -> String {
    format!("vitally:{sync}")
}

/// Whether pg_cron is installed in this database.
pub fn cron_installed(client: &SpiClient<'_>) -> Result<bool> {
    Ok(!client.select("SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron'", None, &[])?.is_empty())
}

/// A clear error when pg_cron cannot schedule here.
pub fn require_cron(client: &SpiClient<'_>) -> Result<()> {
    if cron_installed(client)? {
        return Ok(());
    }
    let db: String = client.select("SELECT pg_catalog.current_database()::text AS db", None, &[])?.first().required("db")?;
    Err(ScheduleError::CronMissing(db).into())
}

/// Creates or changes the job of `sync`, run by `owner`; returns pg_cron's job id.
pub fn schedule(client: &mut SpiClient<'_>, sync: &str, owner: pg_sys::Oid, cron: &str) -> Result<i64> {
    require_cron(client)?;
    let job = job_name(sync);
    if job.len() > MAX_JOB_NAME {
        return Err(ScheduleError::NameTooLong(sync.to_string()).into());
    }
    let command = format!("SELECT vitally.sync({})", pgrx::spi::quote_literal(sync));
    let id = client
        .update(
            "SELECT cron.schedule_in_database($1, $2, $3, pg_catalog.current_database()::text, $4::regrole::text) AS job",
            None,
            &[job.into(), cron.into(), command.into(), owner.into()],
        )?
        .first()
        .required::<i64>("job")?;
    Ok(id)
}

/// Removes the jobs of these syncs, if pg_cron is here; returns how many there were.
pub fn unschedule(client: &mut SpiClient<'_>, syncs: &[String]) -> Result<usize> {
    if syncs.is_empty() || !cron_installed(client)? {
        return Ok(0);
    }
    let jobs: Vec<String> = syncs.iter().map(|s| job_name(s)).collect();
    Ok(client.update("SELECT cron.unschedule(j.jobid) FROM cron.job j WHERE j.jobname = ANY($1::text[])", None, &[jobs.into()])?.len())
}
