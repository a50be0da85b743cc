//! `vitally.wait`, `retry_failed`, `check_destination`: following and steering delivery.

use pgrx::prelude::*;

#[pg_schema]
mod vitally {
    use crate::catalog::{owned_destination, owned_sync};
    use crate::elevation::{acts_as, as_extension_owner, caller};
    use crate::errors::internal;
    use crate::errors::UserError;
    use pgrx::datum::Interval;
    use pgrx::prelude::*;
    use std::time::{Duration, Instant};
    use vitally_client::destination::Api;
    use vitally_client::{ClientConfig, Endpoint, VitallyClient};

    /// Blocks until run `run_id` is finished (or `timeout` passes) and returns its
    /// status: 'succeeded', 'partially_failed', 'failed', or 'running' on timeout.
    /// It sleeps on its latch between looks, and can be cancelled.
    #[pg_extern(volatile)]
    fn wait(run_id: i64, timeout: default!(Interval, "'5 minutes'")) -> String {
        let me = caller();
        let seconds = crate::elevation::with_pinned(|| Spi::get_one_with_args::<f64>("SELECT pg_catalog.date_part('epoch', $1)", &[timeout.into()]))
            .unwrap_or_else(|e| internal(e))
            .unwrap_or(0.0)
            .max(0.0);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut pause = Duration::from_millis(10);
        let not_delivering = crate::worker::not_delivering();
        loop {
            let (status, owner, mine) = as_extension_owner(|| {
                Spi::get_three_with_args::<String, pg_sys::Oid, bool>(
                    "SELECT r.status, s.owner::oid, r.xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned())
                       FROM vitally.sync_run r JOIN vitally.sync s ON s.id = r.sync_id WHERE r.id = $1",
                    &[run_id.into()],
                )
                .unwrap_or((None, None, None))
            });
            let (Some(status), Some(owner)) = (status, owner) else { no_such_run(run_id) };
            if !acts_as(me, owner) {
                no_such_run(run_id);
            }
            if status != "running" {
                return status;
            }
            if mine == Some(true) {
                UserError::new(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("run {run_id} was started in this transaction"))
                    .hint("Commit first: the worker sees the records only after commit.")
                    .raise();
            }
            if let Some(why) = &not_delivering {
                // Waiting would only run out the timeout.
                UserError::new(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("run {run_id} cannot finish here: {why}")).raise();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return status;
            }
            unsafe {
                pg_sys::WaitLatch(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                    pause.min(left).as_millis() as i64,
                    pg_sys::PG_WAIT_EXTENSION,
                );
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
            pg_sys::check_for_interrupts!();
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn no_such_run(run_id: i64) -> ! {
        UserError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("run {run_id} does not exist"))
            .hint("SELECT id, sync_name, status FROM vitally.sync_runs lists the runs of your syncs.")
            .raise()
    }

    /// Queues a sync's failed records again (in a new run); returns how many.
    #[pg_extern(volatile)]
    fn retry_failed(name: &str) -> i64 {
        let me = caller();
        let moved = as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let sync = owned_sync(client, name, me, true);
                // Three statements: in one, the run a CTE inserts would be invisible to the rest.
                let run: i64 = client
                    .update(
                        "INSERT INTO vitally.sync_run (sync_id, planned_at) VALUES ($1, pg_catalog.clock_timestamp()) RETURNING id",
                        None,
                        &[sync.id.into()],
                    )
                    .unwrap_or_else(|e| internal(e))
                    .first()
                    .get_one()
                    .unwrap_or_else(|e| internal(e))
                    .unwrap_or_default();
                let count = client
                    .update(
                        "UPDATE vitally.record r
                            SET status = 'pending', attempts = 0, next_attempt_at = pg_catalog.now(), lease_until = NULL,
                                error = NULL, http_status = NULL, run_id = $2, queued_at = pg_catalog.now()
                          WHERE r.sync_id = $1 AND r.status = 'failed' AND r.replaced_at IS NULL
                            AND NOT EXISTS (SELECT FROM vitally.record p
                                             WHERE p.sync_id = $1 AND p.sync_key = r.sync_key AND p.status = 'pending')",
                        None,
                        &[sync.id.into(), run.into()],
                    )
                    .unwrap_or_else(|e| internal(e))
                    .len() as i64;
                if count == 0 {
                    client.update("DELETE FROM vitally.sync_run WHERE id = $1", None, &[run.into()]).unwrap_or_else(|e| internal(e));
                } else {
                    client
                        .update("UPDATE vitally.sync_run SET records_queued = $2 WHERE id = $1", None, &[run.into(), count.into()])
                        .unwrap_or_else(|e| internal(e));
                }
                count
            })
        });
        if moved > 0 {
            crate::worker::wake_on_commit();
        }
        moved
    }

    /// Makes one real authenticated request per configured API of a destination
    /// (an empty Analytics batch; a REST list of one account) and says whether the key
    /// was accepted: only 401/403 mean it was not, 404 that the URL is wrong.
    #[pg_extern(volatile)]
    fn check_destination(
        name: &str,
    ) -> TableIterator<'static, (name!(api, String), name!(ok, bool), name!(http_status, Option<i32>), name!(detail, String))> {
        let me = caller();
        let endpoints: Vec<(Api, Result<Endpoint, String>)> = as_extension_owner(|| {
            Spi::connect(|client| {
                let dest = owned_destination(client, name, me, false);
                let found = crate::catalog::endpoints(client, dest.id);
                let mut list = Vec::new();
                list.extend(found.analytics.map(|e| (Api::Analytics, e)));
                list.extend(found.rest.map(|e| (Api::Rest, e)));
                list
            })
        });
        let timeout = Duration::from_millis(crate::guc::REQUEST_TIMEOUT_MS.get().max(1) as u64);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let client = VitallyClient::new(ClientConfig { request_timeout: timeout, ..ClientConfig::default() });
        let rows: Vec<_> = endpoints
            .into_iter()
            .map(|(api, endpoint)| {
                let endpoint = match endpoint {
                    Ok(e) => e,
                    Err(why) => return (api.as_str().to_string(), false, None, why),
                };
                let check = runtime.block_on(client.check(&endpoint, api == Api::Rest));
                (api.as_str().to_string(), check.ok, check.http_status.map(i32::from), check.detail)
            })
            .collect();
        TableIterator::new(rows)
    }
}
