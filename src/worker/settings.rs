//! The settings the worker works with, read on start and on SIGHUP.

use crate::queue::JobSizes;
use std::time::Duration;
use vitally_client::{ClientConfig, RetryPolicy};

#[derive(Clone)]
pub struct Settings {
    pub client: ClientConfig,
    pub retry: RetryPolicy,
    pub retention_minutes: i32,
}

impl Settings {
    pub fn read() -> Settings {
        use crate::guc::*;
        Settings {
            client: ClientConfig {
                request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS.get().max(1) as u64),
                max_concurrency: MAX_CONCURRENCY.get().max(1) as usize,
                rest_requests_per_minute: REST_REQUESTS_PER_MINUTE.get().max(1) as u32,
                batch_size: BATCH_SIZE.get().clamp(1, 100) as usize,
            },
            retry: RetryPolicy {
                max_attempts: MAX_ATTEMPTS.get().max(1) as u32,
                min_delay: Duration::from_millis(RETRY_MIN_DELAY_MS.get().max(1) as u64),
                max_delay: Duration::from_millis(RETRY_MAX_DELAY_MS.get().max(RETRY_MIN_DELAY_MS.get()).max(1) as u64),
            },
            retention_minutes: RECORD_RETENTION_MIN.get().max(1),
        }
    }

    /// Records claimed for one job: eight requests for every slot, or about ten seconds
    /// of REST calls at the configured pace.
    pub fn job_sizes(&self) -> JobSizes {
        JobSizes {
            analytics: (self.client.batch_size * self.client.max_concurrency * 8) as i64,
            rest: (self.client.rest_requests_per_minute as i64 / 6).max(10),
            per_sync_at_least: self.client.batch_size as i64,
        }
    }
}
