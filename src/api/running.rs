//! `vitally.sync`, `preview`, `reset`: working out what changed and queueing it.

use pgrx::prelude::*;

#[pg_schema]
mod vitally {
    use crate::catalog::{owned_sync, CatalogError};
    use crate::elevation::{as_extension_owner, caller};
    use crate::planning::{drop_stage, prepare_stored, stage, Pass};
    use crate::progress::Progress;
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;
    use pgrx::JsonB;

    /// Runs the sync's query now, in the caller's transaction, and queues the records
    /// that changed since their last delivery (or whose last try failed); the worker
    /// sends them after commit. Returns the run's id at once.
    #[pg_extern(volatile)]
    fn sync(name: &str, full_resync: default!(bool, false)) -> Result<i64, ErrorReport> {
        let me = caller();
        let sync = as_extension_owner(|| Spi::connect(|client| owned_sync(client, name, me, true)))?;
        if !sync.enabled {
            return Err(CatalogError::SyncDisabled(name.to_string()).into());
        }
        let run_id = crate::planning::run(&sync, Pass::Run { full_resync }, false, &mut Progress::new(name))?;
        crate::doorbell::warn_if_not_delivering();
        Ok(run_id)
    }

    /// What a run would do with the first `n` rows of the query, queueing nothing.
    /// (A key repeated beyond those rows is not seen.)
    #[pg_extern(volatile)]
    #[allow(clippy::type_complexity)] // pgrx takes the result's column names from this type
    fn preview(
        name: &str,
        n: default!(i64, 20),
    ) -> Result<
        TableIterator<'static, (name!(sync_key, Option<String>), name!(action, String), name!(payload, Option<JsonB>), name!(error, Option<String>))>,
        ErrorReport,
    > {
        let me = caller();
        let sync = as_extension_owner(|| Spi::connect(|client| owned_sync(client, name, me, false)))?;
        let prepared = prepare_stored(&sync)?;
        let staged = stage(&sync, &prepared, Pass::Preview { limit: n.max(0) }, &mut Progress::new(name))?;
        let rows = as_extension_owner(|| Spi::connect(|client| crate::queue::preview(client, &staged)))?;
        drop_stage()?;
        Ok(TableIterator::new(rows.into_iter().map(|r| (r.sync_key, r.action, r.payload, r.error))))
    }

    /// Forgets what was delivered: the next run sends every row. Returns how many
    /// records' delivery state was forgotten.
    #[pg_extern(volatile)]
    fn reset(name: &str) -> Result<i64, ErrorReport> {
        let me = caller();
        Ok(as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let sync = owned_sync(client, name, me, true)?;
                crate::queue::forget_delivered(client, sync.id)
            })
        })?)
    }
}
