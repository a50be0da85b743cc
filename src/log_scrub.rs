//! Keeps API keys out of the server log and out of `pg_stat_activity`.
//!
//! Our own messages never contain a key, but Postgres itself logs statement text:
//! the `STATEMENT:` line after an error (`log_min_error_statement`, on by default)
//! and `log_statement = 'all'`. A statement that passes a key to
//! `create_destination` or `alter_destination` would put it in the log. This hook
//! hides such statements. It sees every message only when the library is preloaded
//! (`shared_preload_libraries`), which the README asks for.

use pgrx::prelude::*;
use std::ffi::CStr;

static mut PREVIOUS_HOOK: pg_sys::emit_log_hook_type = None;

pub fn install() {
    unsafe {
        PREVIOUS_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(scrub);
    }
}

/// Whether a statement's text may carry a key.
fn carries_key(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.contains("api_key") || lower.contains("create_destination") || lower.contains("alter_destination")
}

const HIDDEN: &CStr = c"statement hidden by vitally_sync: it may contain a Vitally API key";

/// Replaces this session's statement text in `pg_stat_activity` when it may carry a
/// key: it stays there after the statement ends, for superusers and members of
/// `pg_read_all_stats` to read. Called first by the functions that take keys.
pub fn hide_from_activity() {
    unsafe {
        let query = pg_sys::debug_query_string;
        if !query.is_null() && carries_key(&CStr::from_ptr(query).to_string_lossy()) {
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, HIDDEN.as_ptr());
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn scrub(edata: *mut pg_sys::ErrorData) {
    let query = pg_sys::debug_query_string;
    if !edata.is_null() && !query.is_null() {
        let sql = CStr::from_ptr(query).to_string_lossy();
        if carries_key(&sql) {
            (*edata).hide_stmt = true;
            // log_statement, log_min_duration_statement and friends put the statement in
            // the message itself, and bound parameters in the detail or context.
            let message = (*edata).message;
            if !message.is_null() && CStr::from_ptr(message).to_string_lossy().contains(sql.as_ref()) {
                (*edata).message = pg_sys::pstrdup(HIDDEN.as_ptr());
            }
            for field in [&mut (*edata).detail, &mut (*edata).detail_log, &mut (*edata).context] {
                if !field.is_null() && CStr::from_ptr(*field).to_string_lossy().contains("parameters:") {
                    *field = std::ptr::null_mut();
                }
            }
            (*edata).internalquery = std::ptr::null_mut();
        }
    }
    if let Some(previous) = PREVIOUS_HOOK {
        previous(edata);
    }
}
