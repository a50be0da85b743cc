//! `vitally.schedule` and `vitally.unschedule`: running a sync on a cron schedule.

use pgrx::prelude::*;

#[pg_schema]
mod vitally {
    use crate::catalog::owned_sync;
    use crate::elevation::{as_extension_owner, caller};
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;

    /// Runs the sync on a cron schedule (pg_cron syntax, e.g. '*/15 * * * *'), as the
    /// sync's owner; scheduling again changes the schedule. Returns pg_cron's job id.
    #[pg_extern(volatile)]
    fn schedule(name: &str, cron: &str) -> Result<i64, ErrorReport> {
        let me = caller();
        Ok(as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let sync = owned_sync(client, name, me, false)?;
                crate::scheduling::schedule(client, name, sync.owner, cron)
            })
        })?)
    }

    /// Stops running the sync on a schedule; false when it had none.
    #[pg_extern(volatile)]
    fn unschedule(name: &str) -> Result<bool, ErrorReport> {
        let me = caller();
        Ok(as_extension_owner(|| {
            Spi::connect_mut(|client| {
                owned_sync(client, name, me, false)?;
                crate::scheduling::require_cron(client)?;
                Ok(crate::scheduling::unschedule(client, &[name.to_string()])? > 0)
            })
        })?)
    }
}
