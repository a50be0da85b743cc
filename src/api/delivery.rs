//! `vitally.wait`, `retry_failed`, `check_destination`: following and steering delivery.

use pgrx::prelude::*;

#[pg_schema]
mod vitally {
    use crate::catalog::{owned_destination, owned_sync};
    use crate::elevation::{acts_as, as_extension_owner, caller};
    use crate::queue::RunError;
    use pgrx::datum::Interval;
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;
    use std::time::{Duration, Instant};
    use vitally_client::destination::Api;
    use vitally_client::{ClientConfig, Endpoint, VitallyClient};

    /// Blocks until run `run_id` is finished (or `timeout` passes) and returns its
    /// status: 'succeeded', 'partially_failed', 'failed', or 'running' on timeout.
    /// It sleeps on its latch between looks, and can be cancelled.
    #[pg_extern(volatile)]
    fn wait(run_id: i64, timeout: default!(Interval, "'5 minutes'")) -> Result<String, ErrorReport> {
        let me = caller();
        let seconds = crate::elevation::with_pinned(|| Spi::get_one_with_args::<f64>("SELECT pg_catalog.date_part('epoch', $1)", &[timeout.into()]))
            .map_err(crate::errors::Error::from)?
            .unwrap_or(0.0)
            .max(0.0);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut pause = Duration::from_millis(10);
        let not_delivering = crate::doorbell::not_delivering();
        loop {
            let run = as_extension_owner(|| Spi::connect(|client| crate::queue::run_status(client, run_id)))?;
            // Another role's run looks exactly like a missing one.
            let Some(run) = run.filter(|r| acts_as(me, r.owner)) else { return Err(RunError::NoSuchRun(run_id).into()) };
            if run.status != "running" {
                return Ok(run.status);
            }
            if run.started_here {
                return Err(RunError::StartedHere(run_id).into());
            }
            if let Some(why) = &not_delivering {
                // Waiting would only run out the timeout.
                return Err(RunError::CannotFinish { run: run_id, why: why.clone() }.into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(run.status);
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

    /// Queues a sync's failed records again (in a new run); returns how many.
    #[pg_extern(volatile)]
    fn retry_failed(name: &str) -> Result<i64, ErrorReport> {
        let me = caller();
        let moved = as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let sync = owned_sync(client, name, me, true)?;
                crate::queue::requeue_failed(client, sync.id)
            })
        })?;
        if moved > 0 {
            crate::doorbell::wake_on_commit();
        }
        Ok(moved)
    }

    /// Makes one real authenticated request per configured API of a destination
    /// (an empty Analytics batch; a REST list of one account) and says whether the key
    /// was accepted: only 401/403 mean it was not, 404 that the URL is wrong.
    #[pg_extern(volatile)]
    #[allow(clippy::type_complexity)] // pgrx takes the result's column names from this type
    fn check_destination(
        name: &str,
    ) -> Result<TableIterator<'static, (name!(api, String), name!(ok, bool), name!(http_status, Option<i32>), name!(detail, String))>, ErrorReport>
    {
        let me = caller();
        let endpoints: Vec<(Api, Result<Endpoint, String>)> = as_extension_owner(|| {
            Spi::connect(|client| {
                let dest = owned_destination(client, name, me, false)?;
                let Some(found) = crate::catalog::endpoints(client, dest.id)? else { return Ok(Vec::new()) };
                let mut list = Vec::new();
                list.extend(found.analytics.map(|e| (Api::Analytics, e)));
                list.extend(found.rest.map(|e| (Api::Rest, e)));
                Ok(list)
            })
        })?;
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
        Ok(TableIterator::new(rows))
    }
}
