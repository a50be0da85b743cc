//! Syncs run on a schedule by pg_cron: one job per sync, named `vitally:<sync>`, run as
//! the sync's owner (never with more privileges than the owner has).
//!
//! pg_cron is optional, so nothing here names its objects statically: its schema is
//! looked up when needed, and a missing pg_cron is a clear error, not a failed install.

use crate::errors::internal;
use crate::errors::UserError;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// pg_cron's job names are of type `name`: at most 63 bytes.
const MAX_JOB_NAME: usize = 63;

pub fn job_name(sync: &str) -> String {
    format!("vitally:{sync}")
}

/// Whether pg_cron is installed in this database.
pub fn cron_installed(client: &SpiClient<'_>) -> bool {
    !client.select("SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron'", None, &[]).unwrap_or_else(|e| internal(e)).is_empty()
}

/// Raises a clear error when pg_cron cannot schedule here.
pub fn require_cron(client: &SpiClient<'_>) {
    if cron_installed(client) {
        return;
    }
    let db = client
        .select("SELECT pg_catalog.current_database()::text", None, &[])
        .unwrap_or_else(|e| internal(e))
        .first()
        .get_one::<String>()
        .ok()
        .flatten()
        .unwrap_or_default();
    UserError::new(PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, format!("pg_cron is not installed in database \"{db}\""))
        .hint(format!(
            "In postgresql.conf add pg_cron to shared_preload_libraries and set cron.database_name = '{db}', restart the server, \
             then CREATE EXTENSION pg_cron; or call SELECT vitally.sync(...) from any other scheduler."
        ))
        .raise()
}

/// Creates or changes the job of `sync`, run by `owner`; returns pg_cron's job id.
pub fn schedule(client: &mut SpiClient<'_>, sync: &str, owner: pg_sys::Oid, cron: &str) -> i64 {
    require_cron(client);
    let job = job_name(sync);
    if job.len() > MAX_JOB_NAME {
        UserError::new(
            PgSqlErrorCode::ERRCODE_NAME_TOO_LONG,
            format!("sync name \"{sync}\" is too long to schedule: pg_cron job names hold {MAX_JOB_NAME} bytes"),
        )
        .hint(format!("Use a sync name of at most {} bytes.", MAX_JOB_NAME - job_name("").len()))
        .raise();
    }
    let command = format!("SELECT vitally.sync({})", pgrx::spi::quote_literal(sync));
    client
        .update(
            "SELECT cron.schedule_in_database($1, $2, $3, pg_catalog.current_database()::text, $4::regrole::text)",
            None,
            &[job.into(), cron.into(), command.into(), owner.into()],
        )
        .unwrap_or_else(|e| internal(e))
        .first()
        .get_one::<i64>()
        .ok()
        .flatten()
        .expect("pg_cron returns the job's id")
}

/// Removes the jobs of these syncs, if pg_cron is here; returns how many there were.
pub fn unschedule(client: &mut SpiClient<'_>, syncs: &[String]) -> usize {
    if syncs.is_empty() || !cron_installed(client) {
        return 0;
    }
    let jobs: Vec<String> = syncs.iter().map(|s| job_name(s)).collect();
    client
        .update("SELECT cron.unschedule(j.jobid) FROM cron.job j WHERE j.jobname = ANY($1::text[])", None, &[jobs.into()])
        .unwrap_or_else(|e| internal(e))
        .len()
}
