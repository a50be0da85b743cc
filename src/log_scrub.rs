//! Keeps API keys out of the server log and out of `pg_stat_activity`.
//!
//! Our own messages never contain a key, but Postgres itself logs statement text:
//! the `STATEMENT:` line after an error (`log_min_error_statement`, on by default),
//! `log_statement = 'all'` (with a prepared statement's text in its DETAIL), and the
//! CONTEXT line of a message raised inside dynamic SQL (`EXECUTE format(...)` in a `DO`
//! block or a wrapper function). This hook hides statements that may carry a key, and
//! drops DETAIL and CONTEXT of every message raised while a function that takes keys is
//! running. It sees every message when the library is preloaded
//! (`shared_preload_libraries`); otherwise every message after the library is loaded
//! in a session, and the functions that take keys check that nothing logged the call
//! before that (`keys_stay_out_of_log`).

use crate::errors::Row;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

static mut PREVIOUS_HOOK: pg_sys::emit_log_hook_type = None;
/// Whether the hook was installed while the server preloaded the library, so that it
/// has seen every statement of every session.
static PRELOADED: AtomicBool = AtomicBool::new(false);
/// Whether a function that takes keys is running in this backend (until it returns, or
/// its (sub)transaction ends: an error is reported while this is still set).
static IN_KEY_CALL: AtomicBool = AtomicBool::new(false);
/// The start of the statement (protocol message) during which this backend loaded the
/// library: the hook has seen every message of any statement that started later.
static LOADED_DURING: AtomicI64 = AtomicI64::new(i64::MAX);

pub fn install() {
    unsafe {
        PRELOADED.store(pg_sys::process_shared_preload_libraries_in_progress, Ordering::Relaxed);
        LOADED_DURING.store(pg_sys::GetCurrentStatementStartTimestamp(), Ordering::Relaxed);
        PREVIOUS_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(scrub);
        pg_sys::RegisterXactCallback(Some(on_xact_end), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact_end), std::ptr::null_mut());
    }
}

/// Whether the hook has seen every statement since the server started.
pub fn installed() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// Settings that make Postgres log a statement's text (or a Bind's parameters) before
/// it runs, so before a library that was not preloaded is loaded, with the value that
/// logs nothing. (`log_min_messages` at debug2 and below logs each Parse.)
const LOGGED_BEFORE_LOAD: [(&str, &str); 7] = [
    ("log_statement", "none"),
    ("log_min_duration_statement", "-1"),
    ("log_min_duration_sample", "-1"),
    ("log_transaction_sample_rate", "0"),
    ("debug_print_parse", "off"),
    ("debug_print_rewritten", "off"),
    ("debug_print_plan", "off"),
];

/// Whether a key given in the current statement stays out of the server log. With the
/// preload the hook sees everything. Without it, the hook is installed when this
/// backend loads the library, during the first call: every message after that passes
/// through it, and only the settings above log the call's text before. So keys are safe
/// when those are off and were not changed by SET in this session (a SET to 'none'
/// just before the call would not unlog a text logged at the start of its query
/// string). Returns the setting that makes it unsafe.
pub fn keys_stay_out_of_log() -> Result<(), String> {
    // Preloaded, or loaded by an earlier statement of this session (or at its start,
    // by session_preload_libraries): the hook saw this statement from its start.
    if installed() || unsafe { pg_sys::GetCurrentStatementStartTimestamp() } > LOADED_DURING.load(Ordering::Relaxed) {
        return Ok(());
    }
    if unsafe { pg_sys::log_min_messages } <= pg_sys::DEBUG2 as i32 {
        return Err("log_min_messages is debug2 or lower".into());
    }
    let names = LOGGED_BEFORE_LOAD.map(|(n, _)| format!("'{n}'")).join(", ");
    // Fails closed: settings that cannot be read refuse the key.
    let rows: Vec<(String, String, String)> = crate::elevation::with_pinned(|| {
        Spi::connect(|client| -> crate::errors::Result<_> {
            let mut rows = Vec::new();
            let sql = format!("SELECT name::text, setting::text, source::text FROM pg_catalog.pg_settings WHERE name IN ({names})");
            for r in client.select(&sql, None, &[])? {
                rows.push((r.required("name")?, r.required("setting")?, r.required("source")?));
            }
            Ok(rows)
        })
    })
    .map_err(|e| format!("the logging settings cannot be read ({e})"))?;
    for (name, quiet) in LOGGED_BEFORE_LOAD {
        match rows.iter().find(|(n, _, _)| n == name) {
            Some((_, setting, source)) if setting == quiet && source != "session" => {}
            Some((_, setting, source)) if setting == quiet => return Err(format!("{name} was changed by SET in this session ({source})")),
            Some((_, setting, _)) => return Err(format!("{name} is '{setting}'")),
            None => return Err(format!("{name} cannot be read")),
        }
    }
    Ok(())
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact_end(_event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    IN_KEY_CALL.store(false, Ordering::Relaxed);
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact_end(
    event: pg_sys::SubXactEvent::Type,
    _mine: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        IN_KEY_CALL.store(false, Ordering::Relaxed);
    }
}

/// Called first by the functions that take keys: hides this session's statement in
/// `pg_stat_activity` (it stays there after the statement ends, for superusers and
/// members of `pg_read_all_stats` to read, whatever form the call took: a literal, a
/// prepared statement's parameters, a wrapper function's), and marks the call. The mark
/// ends with `key_call_done()` on a normal return, or when the (sub)transaction ends:
/// an error is reported after Rust has unwound, so a guard dropped on unwinding would
/// clear it too early.
pub fn key_call() {
    IN_KEY_CALL.store(true, Ordering::Relaxed);
    unsafe {
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, HIDDEN.as_ptr());
    }
}

pub fn key_call_done() {
    IN_KEY_CALL.store(false, Ordering::Relaxed);
}

/// Whether a text may carry a key: it names a function that takes one.
fn carries_key(text: &[u8]) -> bool {
    [&b"api_key"[..], b"create_destination", b"alter_destination"]
        .iter()
        .any(|needle| text.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle)))
}

/// Whether a message is Postgres logging a statement's text (`log_statement`,
/// `log_min_duration_statement`, the extended protocol's steps).
fn is_statement_log(message: &[u8]) -> bool {
    [&b"statement: "[..], b"execute ", b"duration: ", b"bind ", b"parse "].iter().any(|p| message.starts_with(p))
}

const HIDDEN: &CStr = c"statement hidden by vitally_sync: it may contain a Vitally API key";

/// The bytes of a C string of the message, read in place: every message of the server
/// passes through the hook, so nothing is copied.
unsafe fn bytes_of<'a>(ptr: *const std::ffi::c_char) -> Option<&'a [u8]> {
    (!ptr.is_null()).then(|| CStr::from_ptr(ptr).to_bytes())
}

#[pg_guard]
unsafe extern "C-unwind" fn scrub(edata: *mut pg_sys::ErrorData) {
    if !edata.is_null() {
        let statement = bytes_of(pg_sys::debug_query_string).is_some_and(carries_key);
        let in_call = IN_KEY_CALL.load(Ordering::Relaxed);
        // A prepared statement's text comes in the DETAIL of log_statement's line, and
        // dynamic SQL's in the CONTEXT.
        let around =
            [(*edata).detail, (*edata).detail_log, (*edata).context, (*edata).internalquery].iter().any(|f| bytes_of(*f).is_some_and(carries_key));
        if statement || in_call || around {
            (*edata).hide_stmt = true;
            // log_statement, log_min_duration_statement and friends put the statement in
            // the message itself; every other message (an error the user must read) stays.
            if bytes_of((*edata).message).is_some_and(is_statement_log) {
                (*edata).message = pg_sys::pstrdup(HIDDEN.as_ptr());
            }
            (*edata).detail = std::ptr::null_mut();
            (*edata).detail_log = std::ptr::null_mut();
            (*edata).context = std::ptr::null_mut();
            (*edata).internalquery = std::ptr::null_mut();
            if statement && (*edata).elevel >= PgLogLevel::ERROR as i32 {
                // A call that fails before our function runs (a misspelt argument) would
                // leave its text in pg_stat_activity.
                pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, HIDDEN.as_ptr());
            }
        }
    }
    if let Some(previous) = PREVIOUS_HOOK {
        previous(edata);
    }
}
