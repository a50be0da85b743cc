//! Running a few statements as the extension's owner, on behalf of a caller we know.
//!
//! A `SECURITY DEFINER` function cannot tell who called it, and our functions must:
//! every destination and sync belongs to a role. So the SQL functions run as the
//! caller (who they are is `caller()`), and only the statements that touch the
//! extension's tables switch to the owner, exactly as Postgres does for a
//! `SECURITY DEFINER` function: user switched with `SECURITY_LOCAL_USERID_CHANGE`,
//! `search_path` pinned to `pg_catalog, pg_temp`. An error inside aborts the
//! (sub)transaction, which restores both.

use pgrx::prelude::*;
use std::ffi::CStr;

/// The role calling the current SQL function.
pub fn caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetUserId() }
}

/// Whether `role` may act as `owner` (it is the owner, a member that inherits it, or a superuser).
pub fn acts_as(role: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    unsafe { pg_sys::has_privs_of_role(role, owner) }
}

fn extension_owner() -> pg_sys::Oid {
    Spi::get_one::<pg_sys::Oid>("SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'vitally_sync'")
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            crate::errors::UserError::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "extension vitally_sync is not installed in this database",
            )
            .hint("CREATE EXTENSION vitally_sync;")
            .raise()
        })
}

/// Runs `f` as the extension's owner with a safe `search_path`, then switches back.
pub fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = extension_owner();
    with_settings(&[(c"search_path", c"pg_catalog, pg_temp")], || unsafe {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context = 0;
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(owner, saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
        let result = f();
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
        result
    })
}

/// Runs `f` with settings changed for its duration only, as a function's `SET` clause
/// does (a `SET LOCAL` in our SQL would last until the caller's transaction ends).
pub fn with_settings<R>(settings: &[(&CStr, &CStr)], f: impl FnOnce() -> R) -> R {
    unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        let result = f();
        pg_sys::AtEOXact_GUC(true, nest);
        result
    }
}

/// Runs `f` as `role`, when that is not already who we are: a sync's query runs as
/// the sync's owner even when a superuser runs the sync, so that nobody's query ever
/// gains privileges. `search_path` stays the session's, as the query expects it.
pub fn as_role<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    unsafe {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context = 0;
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        if saved_user == role {
            return f();
        }
        pg_sys::SetUserIdAndSecContext(role, saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
        let result = f();
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
        result
    }
}
