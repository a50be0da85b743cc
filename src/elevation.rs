//! Who our statements run as, and what a user can make them do.
//!
//! A `SECURITY DEFINER` function cannot tell who called it, and our functions must:
//! every destination and sync belongs to a role. So the SQL functions run as the
//! caller (who they are is `caller()`), and only the statements that touch the
//! extension's tables switch to the owner, as Postgres does for a `SECURITY DEFINER`
//! function. The owner is a superuser, so those statements are fixed text with every
//! user value bound as a parameter, read only columns of built-in types, and run with
//! every setting that changes how SQL is read pinned (`PINNED`).
//!
//! A sync's query, with our SQL that turns its values into JSON in the same statement
//! (which calls functions the owner of a type may choose: casts, output functions), runs
//! in `sandboxed`: as the
//! sync's owner inside a security-restricted operation with a GUC nest level unwound
//! afterwards, as Postgres runs maintenance as a table's owner, so that it can leave
//! nothing behind in the caller's session (no setting, temporary table, prepared
//! statement or role change). An error inside aborts the (sub)transaction, which
//! restores user, context and settings.

use pgrx::prelude::*;
use std::ffi::CStr;

/// The settings every statement of ours runs with: names resolve in `pg_catalog` first
/// (temporary objects only where named `pg_temp.x`), and literals read the same whatever
/// the session set (`standard_conforming_strings = off` makes `\'` end a literal).
// `search_path` first: `QUERY_SETTINGS` is the rest.
pub const PINNED: &[(&CStr, &CStr)] = &[
    (c"search_path", c"pg_catalog, pg_temp"),
    (c"standard_conforming_strings", c"on"),
    (c"backslash_quote", c"off"),
    (c"transform_null_equals", c"off"),
    (c"array_nulls", c"on"),
];

/// How a sync's own query is read: as `PINNED`, but with the session's `search_path`
/// (the query names its tables as its owner expects): `PINNED` less its first entry.
const QUERY_SETTINGS: &[(&CStr, &CStr)] = PINNED.split_at(1).1;

/// The role calling the current SQL function.
pub fn caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetUserId() }
}

/// Whether `role` may act as `owner` (it is the owner, a member that inherits it, or a superuser).
pub fn acts_as(role: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    unsafe { pg_sys::has_privs_of_role(role, owner) }
}

/// The extension is not installed in this database (a library loaded without it).
#[derive(Debug, thiserror::Error)]
#[error("extension vitally_sync is not installed in this database")]
pub struct NotInstalled;

impl From<NotInstalled> for pgrx::pg_sys::panic::ErrorReport {
    fn from(e: NotInstalled) -> Self {
        crate::errors::report(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string(), Some("CREATE EXTENSION vitally_sync;".into()))
    }
}

/// The extension's owner, found through the catalog cache: no SQL, so nothing the
/// session has set can change what it means.
/// Kept for the rest of the transaction (a watch's trigger switches to it after every
/// statement that changes a watched table).
fn extension_owner() -> Result<pg_sys::Oid, crate::errors::Error> {
    let ext = unsafe { pg_sys::get_extension_oid(c"vitally_sync".as_ptr(), true) };
    if ext == pg_sys::InvalidOid {
        return Err(NotInstalled.into());
    }
    let xact = unsafe { (*pg_sys::MyProc).lxid };
    if let Some((at, of, owner)) = OWNER.get() {
        if at == xact && of == ext {
            return Ok(owner);
        }
    }
    let owner = unsafe { owner_of(ext) }.ok_or(NotInstalled)?;
    OWNER.set(Some((xact, ext, owner)));
    Ok(owner)
}

/// `pg_extension.extowner` of extension `ext`, read by its index as `get_extension_oid`
/// reads it by name: no SQL to plan on a writer's every transaction.
unsafe fn owner_of(ext: pg_sys::Oid) -> Option<pg_sys::Oid> {
    let rel = pg_sys::table_open(pg_sys::ExtensionRelationId, pg_sys::AccessShareLock as i32);
    let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
    pg_sys::ScanKeyInit(
        &mut key,
        pg_sys::Anum_pg_extension_oid as pg_sys::AttrNumber,
        pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
        pg_sys::Oid::from(pg_sys::F_OIDEQ),
        ext.into(),
    );
    let scan = pg_sys::systable_beginscan(rel, pg_sys::Oid::from(pg_sys::ExtensionOidIndexId), true, std::ptr::null_mut(), 1, &mut key);
    let tuple = pg_sys::systable_getnext(scan);
    let owner = (!tuple.is_null()).then(|| (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_extension>(tuple)).extowner);
    pg_sys::systable_endscan(scan);
    pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
    owner
}

thread_local! {
    /// The extension's owner as found in a transaction (its local id), for that extension.
    static OWNER: std::cell::Cell<Option<(pg_sys::LocalTransactionId, pg_sys::Oid, pg_sys::Oid)>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` as the extension's owner with `PINNED` settings, then switches back (on an
/// error value too; an ERROR aborts the transaction, which switches back itself).
///
/// The transaction gets an id first: pgrx runs SPI statements read-only until it has one,
/// and read-only a statement sees the snapshot of the first (`vitally.wait` polls) and
/// may not lock rows (FOR UPDATE in a sync's query, in our catalog reads).
pub fn as_extension_owner<R>(f: impl FnOnce() -> Result<R, crate::errors::Error>) -> Result<R, crate::errors::Error> {
    unsafe { pg_sys::GetCurrentTransactionId() };
    let owner = extension_owner()?;
    with_pinned(|| as_user(owner, pg_sys::SECURITY_LOCAL_USERID_CHANGE, f))
}

/// Runs `f` as `role` with `flags` added to the security context, as Postgres does
/// around a `SECURITY DEFINER` call or maintenance; switches back after.
fn as_user<R>(role: pg_sys::Oid, flags: u32, f: impl FnOnce() -> R) -> R {
    unsafe {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context = 0;
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(role, saved_context | flags as i32);
        let result = f();
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
        result
    }
}

/// Runs `f` with `PINNED` settings, as the current user: for our statements that run as
/// the caller.
pub fn with_pinned<R>(f: impl FnOnce() -> R) -> R {
    with_settings(PINNED, f)
}

/// Runs `f` with settings changed for its duration only, as a function's `SET` clause
/// does (a `SET LOCAL` in our SQL would last until the caller's transaction ends).
/// Whatever else changed settings inside is undone too.
pub fn with_settings<R>(settings: &[(&CStr, &CStr)], f: impl FnOnce() -> R) -> R {
    unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        set_all(settings);
        let result = f();
        pg_sys::AtEOXact_GUC(false, nest);
        result
    }
}

unsafe fn set_all(settings: &[(&CStr, &CStr)]) {
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
}

/// Runs `f` as `role` inside a security-restricted operation, as Postgres runs
/// maintenance as a table's owner: the user's code it runs can create no temporary
/// table or type, prepare nothing, change no role, and every setting it changes
/// (`set_config(..., false)` too) is undone when `f` returns.
/// The SQL we wrap around the query (hashing, JSON) runs in the same statement, so with
/// the query's `search_path` too: as the sync's owner, it can only mislead itself.
pub fn sandboxed<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    // User first, then the nest level, as Postgres orders them for maintenance.
    as_user(role, pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION, || with_settings(QUERY_SETTINGS, f))
}

/// As `sandboxed`, with `search_path` set too: for SQL a role wrote in its own session
/// and that runs in another's (a watch's key, in a writer's transaction), so that names
/// in it mean what they meant to its author whatever the running session set.
pub fn sandboxed_with_path<R>(role: pg_sys::Oid, search_path: &CStr, f: impl FnOnce() -> R) -> R {
    sandboxed(role, || with_settings(&[(c"search_path", search_path)], f))
}
