//! The settings of `sql-api.md`, registered when the library loads.
//!
//! Only the worker reads most of them, on start and on `pg_reload_conf()`.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static MAX_CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(4);
pub static MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static REQUEST_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
pub static REST_REQUESTS_PER_MINUTE: GucSetting<i32> = GucSetting::<i32>::new(900);
pub static RETRY_MIN_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(1_000);
pub static RETRY_MAX_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(600_000);
pub static RECORD_RETENTION_MIN: GucSetting<i32> = GucSetting::<i32>::new(14 * 24 * 60);
pub static LIVE_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(500);
pub static ALLOWED_HOSTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"*.vitally.io, *.vitally-eu.io"));

/// Registers the settings (all of them may be set with the library loaded late: none
/// is postmaster-only).
pub fn register() {
    GucRegistry::define_string_guc(
        c"vitally.database",
        c"Serve only this database (empty: every database where the extension is installed).",
        c"Takes effect on reload: the launcher stops the workers of databases it no longer serves.",
        &DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"vitally.allowed_hosts",
        c"Hosts a destination's URL override may name (comma-separated; *.example.com for any host under it).",
        c"Only superusers can change it; by default only Vitally's own hosts. Plain http is accepted for loopback hosts only.",
        &ALLOWED_HOSTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"vitally.batch_size",
        c"Records per Analytics API batch request.",
        c"Vitally accepts at most 100 messages in one /batch request.",
        &BATCH_SIZE,
        1,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"vitally.max_concurrency",
        c"HTTP requests the worker keeps in flight at once.",
        c"",
        &MAX_CONCURRENCY,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"vitally.max_attempts",
        c"Tries per record before it is marked failed.",
        c"Rate-limited answers (429) do not use up an attempt.",
        &MAX_ATTEMPTS,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"vitally.retry_min_delay",
        c"Wait before the first retry of a record; it doubles with each attempt (plus jitter).",
        c"",
        &RETRY_MIN_DELAY_MS,
        1,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"vitally.retry_max_delay",
        c"The longest wait between two attempts of a record.",
        c"",
        &RETRY_MAX_DELAY_MS,
        1,
        86_400_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"vitally.request_timeout",
        c"How long one HTTP request to Vitally may take.",
        c"",
        &REQUEST_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"vitally.rest_requests_per_minute",
        c"Pace of REST API calls per key.",
        c"Vitally allows 1000 per minute per key; keep a margin for other clients of the same key.",
        &REST_REQUESTS_PER_MINUTE,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"vitally.live_delay",
        c"How long after a watched change its sync's changed keys are planned.",
        c"Changes to one row within this time become one record; a longer delay sends less, later.",
        &LIVE_DELAY_MS,
        0,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"vitally.record_retention",
        c"How long delivered records stay in vitally.records.",
        c"Failed records stay until they are retried or the sync is reset.",
        &RECORD_RETENTION_MIN,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MIN,
    );
}

/// The hosts a URL override may name, as the setting says now.
pub fn allowed_hosts() -> vitally_client::destination::AllowedHosts {
    let list = ALLOWED_HOSTS.get().and_then(|s| s.into_string().ok()).unwrap_or_default();
    vitally_client::destination::AllowedHosts::parse(&list)
}

/// The one database to serve, when `vitally.database` names one.
pub fn database_filter() -> Option<String> {
    DATABASE.get().and_then(|s| s.into_string().ok()).filter(|s| !s.is_empty())
}
