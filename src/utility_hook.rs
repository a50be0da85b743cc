//! Statements the launcher must hear of, seen in every session (the library is preloaded):
//! - `CREATE EXTENSION` (any: ours may come by CASCADE): at commit the launcher looks at
//!   the database again;
//! - `DROP DATABASE`, `ALTER DATABASE ... RENAME` or `SET TABLESPACE`, and `CREATE DATABASE
//!   ... TEMPLATE`: each refuses to run while another session is connected to the
//!   database, and a worker is one;
//! - `DROP EXTENSION vitally_sync` and `ALTER EXTENSION vitally_sync UPDATE`: they lock the
//!   extension's tables one by one, and a worker's round in between deadlocks with them
//!   (and the user's statement may be the one cancelled).
//!
//! For the last two kinds the database's worker is stopped first (and kept stopped until
//! the statement's transaction ends), but only for the owner of the database (or of the
//! extension) or a superuser: anyone else's statement fails on its own, and must not stop
//! delivery on the way.

use pgrx::prelude::*;
use pgrx::PgList;
use std::ffi::CStr;

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

/// The longest a statement keeps the launcher from starting the database's worker again:
/// the pause ends when the statement fails, or when its transaction commits (except
/// after a DROP DATABASE, when nothing is left to serve).
const PAUSE_MS: u64 = 60_000;
/// How long the statement waits for the worker to exit (in-flight requests get 3 s).
const WAIT_FOR_EXIT_MS: u64 = 5_000;

/// Called from `_PG_init` while preloading.
pub fn install() {
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum AtCommit {
    /// Started again (a rename, a copy, an update; after DROP EXTENSION it finds no
    /// extension and leaves: a savepoint may have undone the drop).
    Restart,
    /// The database is gone.
    DatabaseGone,
}

enum Seen {
    Nothing,
    Extension,
    /// A statement that needs database `db` without its worker; `then` says what becomes
    /// of the worker when the statement commits.
    NeedsWorkerStopped {
        db: pg_sys::Oid,
        then: AtCommit,
    },
}

unsafe fn c_str(p: *const std::ffi::c_char) -> Option<String> {
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// The database named `name` if the current user owns it (a superuser owns all).
unsafe fn owned_database(name: Option<String>) -> Option<pg_sys::Oid> {
    let name = std::ffi::CString::new(name?).ok()?;
    let db = unsafe { pg_sys::get_database_oid(name.as_ptr(), true) };
    (db != pg_sys::InvalidOid && unsafe { pg_sys::pg_database_ownercheck(db, pg_sys::GetUserId()) }).then_some(db)
}

/// This database, if the current user owns our extension in it (a superuser owns all).
unsafe fn owned_extension(name: Option<String>) -> Option<pg_sys::Oid> {
    if name.as_deref() != Some("vitally_sync") {
        return None;
    }
    let ext = unsafe { pg_sys::get_extension_oid(c"vitally_sync".as_ptr(), true) };
    (ext != pg_sys::InvalidOid && unsafe { pg_sys::pg_extension_ownercheck(ext, pg_sys::GetUserId()) }).then_some(unsafe { pg_sys::MyDatabaseId })
}

/// The value of option `name` in a list of DefElem, as text.
unsafe fn option(options: *mut pg_sys::List, name: &str) -> Option<String> {
    let list = unsafe { PgList::<pg_sys::DefElem>::from_pg(options) };
    for def in list.iter_ptr() {
        let def = unsafe { &*def };
        if unsafe { c_str(def.defname) }.as_deref() == Some(name) && !def.arg.is_null() {
            return Some(unsafe { CStr::from_ptr(pg_sys::defGetString(def as *const _ as *mut _)) }.to_string_lossy().into_owned());
        }
    }
    None
}

unsafe fn classify(stmt: *mut pg_sys::Node) -> Seen {
    unsafe {
        if stmt.is_null() {
            return Seen::Nothing;
        }
        let alone = |db: Option<pg_sys::Oid>, then| db.map_or(Seen::Nothing, |db| Seen::NeedsWorkerStopped { db, then });
        match (*stmt).type_ {
            pg_sys::NodeTag::T_CreateExtensionStmt => Seen::Extension,
            pg_sys::NodeTag::T_AlterExtensionStmt => {
                let s = &*(stmt as *mut pg_sys::AlterExtensionStmt);
                alone(owned_extension(c_str(s.extname)), AtCommit::Restart)
            }
            pg_sys::NodeTag::T_DropStmt => {
                let s = &*(stmt as *mut pg_sys::DropStmt);
                if s.removeType != pg_sys::ObjectType::OBJECT_EXTENSION {
                    return Seen::Nothing;
                }
                let names = PgList::<pg_sys::Node>::from_pg(s.objects);
                let ours = names.iter_ptr().find_map(|n| {
                    let is_string = !n.is_null() && (*n).type_ == pg_sys::NodeTag::T_String;
                    is_string.then(|| owned_extension(c_str((*(n as *mut pg_sys::String)).sval))).flatten()
                });
                alone(ours, AtCommit::Restart)
            }
            pg_sys::NodeTag::T_DropdbStmt => {
                let s = &*(stmt as *mut pg_sys::DropdbStmt);
                alone(owned_database(c_str(s.dbname)), AtCommit::DatabaseGone)
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let s = &*(stmt as *mut pg_sys::RenameStmt);
                if s.renameType == pg_sys::ObjectType::OBJECT_DATABASE {
                    alone(owned_database(c_str(s.subname)), AtCommit::Restart)
                } else {
                    Seen::Nothing
                }
            }
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let s = &*(stmt as *mut pg_sys::AlterDatabaseStmt);
                if option(s.options, "tablespace").is_some() {
                    alone(owned_database(c_str(s.dbname)), AtCommit::Restart)
                } else {
                    Seen::Nothing
                }
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                let s = &*(stmt as *mut pg_sys::CreatedbStmt);
                alone(owned_database(option(s.options, "template")), AtCommit::Restart)
            }
            _ => Seen::Nothing,
        }
    }
}

/// Whether our extension exists as the transaction commits (read at pre-commit, while
/// the catalog can still be read): only then is a look asked for, so that no role can
/// make the launcher start processes by creating (or failing to create) other extensions.
static OURS_AT_COMMIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn before_commit_see_whether_ours_exists() {
    let exists = unsafe { pg_sys::get_extension_oid(c"vitally_sync".as_ptr(), true) } != pg_sys::InvalidOid;
    OURS_AT_COMMIT.store(exists, std::sync::atomic::Ordering::Relaxed);
}

fn at_commit_look_again() {
    if OURS_AT_COMMIT.swap(false, std::sync::atomic::Ordering::Relaxed) {
        crate::roster::ask_for_a_look();
        crate::roster::ring();
    }
}

/// What the hook does before the statement runs, in a guarded frame of its own: an
/// error here is raised as Postgres raises one.
#[pg_guard]
unsafe extern "C-unwind" fn before(stmt: *mut pg_sys::Node) {
    match unsafe { classify(stmt) } {
        Seen::Nothing => {}
        Seen::Extension => {
            pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::PreCommit, before_commit_see_whether_ours_exists);
            pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, at_commit_look_again);
        }
        Seen::NeedsWorkerStopped { db, then } => {
            // A failed statement (or a cancelled wait) gives the worker back at once; so
            // does any other at commit (its lock on the database keeps a new worker
            // waiting until then).
            pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, move || crate::roster::resume(db));
            if then == AtCommit::Restart {
                pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || crate::roster::resume(db));
            }
            crate::roster::pause(db, PAUSE_MS, WAIT_FOR_EXIT_MS);
        }
    }
}

// Postgres's own, called directly: pgrx's binding would turn every error of every
// utility statement of every session into a Rust panic and back on its way through.
unsafe extern "C-unwind" {
    #[link_name = "standard_ProcessUtility"]
    fn standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// The hook. Not guarded, and nothing in it owns anything: an error of the statement
/// passes through this frame untouched, as through Postgres's own.
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    unsafe {
        before((*pstmt).utilityStmt);
        match PREVIOUS {
            Some(previous) => previous(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
            None => standard_process_utility(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
        }
    }
}
