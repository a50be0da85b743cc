//! Watches (`vitally.watch()`): statement triggers on a table a sync reads that mark the
//! sync keys each change touches, for the live planner (`live_planner.rs`) to plan.
//!
//! After each statement that inserts, updates or deletes rows of a watched table, the
//! watch's key expression is evaluated over the statement's transition tables (old rows
//! and new) and the keys are appended to `vitally.change`, in the writer's transaction:
//! a rollback marks nothing, a commit marks durably. A TRUNCATE marks every key.
//!
//! The key expression is the watcher's SQL, and it runs in someone else's transaction:
//! so as the sync's owner, sandboxed, with the `search_path` recorded by `watch()`, never
//! with the writer's rights or settings. If it fails, the writer's statement still
//! succeeds: the sync is marked for a plan of every key instead, and a WARNING says why.

use crate::elevation::{as_extension_owner, sandboxed_with_path, with_pinned};
use crate::errors::{report, Result, Row};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgTryBuilder;
use std::cell::Cell;
use std::panic::AssertUnwindSafe;

/// What a user can get wrong about a watch.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("table \"{0}\" does not exist")]
    NoSuchTable(String),
    #[error("\"{0}\" is not a table: only tables can be watched")]
    NotATable(String),
    #[error("the sync's owner {owner} may not {what} table {table}")]
    OwnerMayNot { owner: String, what: &'static str, privilege: &'static str, table: String },
    #[error("the sync's owner {0} cannot log in, and live planning connects as that role")]
    OwnerCannotLogIn(String),
    #[error("the key of the watch on {table} is not one expression over its rows: {message}")]
    BadKey { table: String, message: String },
    #[error("sync \"{sync}\" does not watch table {table}")]
    NotWatched { sync: String, table: String },
    #[error("vitally.watch_trigger() is only for the triggers vitally.watch() creates")]
    ForeignTrigger,
}

impl From<WatchError> for ErrorReport {
    fn from(e: WatchError) -> Self {
        use PgSqlErrorCode as C;
        use WatchError::*;
        let (code, hint) = match &e {
            NoSuchTable(_) => (C::ERRCODE_UNDEFINED_TABLE, Some("Name the table as the sync's query does, schema-qualified if need be.".into())),
            NotATable(_) => (C::ERRCODE_WRONG_OBJECT_TYPE, Some("Watch the tables a view reads, each with the expression that gives the sync key.".into())),
            OwnerMayNot { owner, privilege, table, .. } => (
                C::ERRCODE_INSUFFICIENT_PRIVILEGE,
                Some(format!(
                    "GRANT {privilege} ON {table} TO {owner}; (a watch adds triggers to the table, which takes what CREATE TRIGGER takes, and reads it as the sync's owner)"
                )),
            ),
            OwnerCannotLogIn(owner) => (C::ERRCODE_INSUFFICIENT_PRIVILEGE, Some(format!("ALTER ROLE {owner} LOGIN; or have a role that can log in own the sync."))),
            BadKey { .. } => (C::ERRCODE_INVALID_PARAMETER_VALUE, Some("Give a column of the table, or an expression over its columns such as lower(email).".into())),
            NotWatched { .. } => (C::ERRCODE_UNDEFINED_OBJECT, Some("SELECT * FROM vitally.watches lists the tables your syncs watch.".into())),
            ForeignTrigger => (C::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED, Some("Drop this trigger; SELECT vitally.watch(sync, table) watches a table.".into())),
        };
        report(code, e.to_string(), hint)
    }
}

#[pg_schema]
mod vitally {
    use pgrx::prelude::*;

    /// The trigger function of every watch: `vitally.watch_trigger(watch_id)`, AFTER each
    /// statement. Errors are raised inside (pgrx would turn a returned one into a panic).
    #[pg_trigger]
    fn watch_trigger<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
        if let Err(e) = super::mark(trigger) {
            pgrx::pg_sys::panic::ErrorReport::from(e).report(PgLogLevel::ERROR);
        }
        Ok(None)
    }
}

/// The names the transition tables have in the statement that reads the keys.
const OLD: &str = "vitally_old";
const NEW: &str = "vitally_new";

/// The statement that gives the distinct keys of `sources` (transition tables, or the
/// table itself when a watch is checked): the same text in both, so what was checked
/// is what runs.
fn keys_sql(key: &str, sources: &[&str]) -> String {
    let each: Vec<String> = sources.iter().map(|s| format!("SELECT ({key})::pg_catalog.text AS k FROM {s}")).collect();
    format!("SELECT pg_catalog.array_agg(DISTINCT x.k) AS keys FROM ({}) x WHERE x.k IS NOT NULL", each.join(" UNION ALL "))
}

struct Watch {
    sync_id: i64,
    relid: pg_sys::Oid,
    owner: pg_sys::Oid,
    key: String,
    search_path: std::ffi::CString,
}

fn mark(trigger: &PgTrigger<'_>) -> Result<()> {
    let args = trigger.extra_args().unwrap_or_default();
    let Some(watch_id) = args.first().and_then(|a| a.parse::<i64>().ok()) else {
        return Err(WatchError::ForeignTrigger.into());
    };
    let data = trigger.trigger_data();
    let event = data.tg_event;
    // A watch dropped in this transaction, or a trigger left behind by hand: nothing to mark.
    let Some(watch) = as_extension_owner(|| Spi::connect(|client| find(client, watch_id)))? else {
        return Ok(());
    };
    // Only on the table watched, once per statement: a trigger of one's own naming
    // another's watch would run that watch's key, as its owner, over one's own rows.
    let relid = unsafe { (*data.tg_relation).rd_id };
    if relid != watch.relid || event & pg_sys::TRIGGER_EVENT_ROW != 0 || event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_AFTER {
        return Err(WatchError::ForeignTrigger.into());
    }
    let truncate = event & pg_sys::TRIGGER_EVENT_OPMASK == pg_sys::TRIGGER_EVENT_TRUNCATE;
    let keys: Option<Vec<String>> = if truncate {
        None
    } else {
        let mut sources = Vec::new();
        if !data.tg_oldtable.is_null() {
            sources.push(OLD);
        }
        if !data.tg_newtable.is_null() {
            sources.push(NEW);
        }
        let sql = keys_sql(&watch.key, &sources);
        let trigdata = data as *const pg_sys::TriggerData as *mut pg_sys::TriggerData;
        let evaluated = in_subtransaction(|| {
            sandboxed_with_path(watch.owner, &watch.search_path, || {
                Spi::connect(|client| -> Result<Option<Vec<String>>> {
                    unsafe { pg_sys::SPI_register_trigger_data(trigdata) };
                    Ok(client.select(&sql, Some(1), &[])?.first().optional::<Vec<String>>("keys")?)
                })
            })
        });
        match evaluated {
            Ok(Ok(keys)) => Some(keys.unwrap_or_default()),
            Ok(Err(e)) => {
                warn_every_key(trigger, &e.to_string());
                None
            }
            Err(message) => {
                warn_every_key(trigger, &message);
                None
            }
        }
    };
    if keys.as_ref().is_some_and(|k| k.is_empty()) {
        return Ok(());
    }
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            match &keys {
                Some(keys) => client.update(
                    "INSERT INTO vitally.change (watch_id, sync_id, sync_key) SELECT $1, $2, k FROM pg_catalog.unnest($3::pg_catalog.text[]) k",
                    None,
                    &[watch_id.into(), watch.sync_id.into(), keys.clone().into()],
                )?,
                None => client.update(
                    "INSERT INTO vitally.change (watch_id, sync_id, sync_key) VALUES ($1, $2, NULL)",
                    None,
                    &[watch_id.into(), watch.sync_id.into()],
                )?,
            };
            Ok(())
        })
    })?;
    ring_on_commit();
    Ok(())
}

fn find(client: &SpiClient<'_>, watch_id: i64) -> Result<Option<Watch>> {
    let row = client
        .select(
            "SELECT w.sync_id, w.relid::pg_catalog.oid AS relid, s.owner::pg_catalog.oid AS owner, w.key_expr, w.search_path
               FROM vitally.watch w JOIN vitally.sync s ON s.id = w.sync_id WHERE w.id = $1",
            Some(1),
            &[watch_id.into()],
        )?
        .first();
    if row.is_empty() {
        return Ok(None);
    }
    Ok(Some(Watch {
        sync_id: row.required("sync_id")?,
        relid: row.required("relid")?,
        owner: row.required("owner")?,
        key: row.required("key_expr")?,
        search_path: std::ffi::CString::new(row.required::<String>("search_path")?).unwrap_or_default(),
    }))
}

fn warn_every_key(trigger: &PgTrigger<'_>, why: &str) {
    let table = trigger.table_name().unwrap_or_default();
    warning!("vitally_sync: the key of a watch on table \"{table}\" failed on this change ({why}); every key of its sync will be planned again");
}

/// Runs `f` in a subtransaction, as a PL/pgSQL `EXCEPTION` block does: an ERROR inside
/// is rolled back (the user, settings and SPI connections it left with it) and returned
/// as its message, and the writer's statement goes on.
fn in_subtransaction<R>(f: impl FnOnce() -> R) -> std::result::Result<R, String> {
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        PgTryBuilder::new(AssertUnwindSafe(|| {
            let result = f();
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            Ok(result)
        }))
        .catch_others(|e| {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            Err(crate::errors::caught(&e).message().to_string())
        })
        .execute()
    }
}

thread_local! {
    /// Whether this transaction already rings the worker when it commits.
    static RINGING: Cell<bool> = const { Cell::new(false) };
}

/// The worker is rung once per transaction that marked keys, however many statements did.
fn ring_on_commit() {
    if RINGING.replace(true) {
        return;
    }
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, || {
        RINGING.set(false);
        crate::doorbell::wake();
    });
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, || RINGING.set(false));
}

/// What a watch is checked against, found as the caller (the table is named as the
/// caller would name it).
pub struct Table {
    pub oid: pg_sys::Oid,
    /// Schema-qualified and quoted, from the catalog.
    pub name: String,
}

/// Resolves a table name with the caller's `search_path`.
pub fn resolve(name: &str) -> Result<Table> {
    let oid = Spi::get_one_with_args::<pg_sys::Oid>("SELECT pg_catalog.to_regclass($1)::pg_catalog.oid", &[name.into()])?;
    let Some(oid) = oid else {
        return Err(WatchError::NoSuchTable(name.to_string()).into());
    };
    let (qualified, kind) = with_pinned(|| {
        Spi::connect(|client| -> Result<(String, String)> {
            let row = client
                .select(
                    "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS name, c.relkind::pg_catalog.text AS kind
                       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                    Some(1),
                    &[oid.into()],
                )?
                .first();
            Ok((row.required("name")?, row.required("kind")?))
        })
    })?;
    if kind != "r" && kind != "p" {
        return Err(WatchError::NotATable(qualified).into());
    }
    Ok(Table { oid, name: qualified })
}

/// Checks that `owner` may watch `table` with `key` (read as `search_path`): it may read
/// the table and add triggers to it (what CREATE TRIGGER asks of a role), can log in
/// (the live planner connects as it), and the key is one expression over the table's
/// rows, run once with LIMIT 0 as that role.
pub fn check(owner: pg_sys::Oid, owner_name: &str, table: &Table, key: &str, search_path: &std::ffi::CStr) -> Result<()> {
    let (read, trigger, login) = with_pinned(|| {
        Spi::connect(|client| -> Result<(bool, bool, bool)> {
            let row = client
                .select(
                    "SELECT pg_catalog.has_table_privilege($1, $2, 'SELECT') AS read,
                            pg_catalog.has_table_privilege($1, $2, 'TRIGGER') AS trigger,
                            (SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE oid = $1) AS login",
                    Some(1),
                    &[owner.into(), table.oid.into()],
                )?
                .first();
            Ok((row.required("read")?, row.required("trigger")?, row.optional("login")?.unwrap_or(false)))
        })
    })?;
    let may_not = |what, privilege| WatchError::OwnerMayNot { owner: owner_name.to_string(), what, privilege, table: table.name.clone() };
    if !read {
        return Err(may_not("read", "SELECT").into());
    }
    if !trigger {
        return Err(may_not("add triggers to", "TRIGGER").into());
    }
    if !login {
        return Err(WatchError::OwnerCannotLogIn(owner_name.to_string()).into());
    }
    let sql = format!("{} LIMIT 0", keys_sql(key, &[&format!("ONLY {}", table.name)]));
    let bad = |message: String| WatchError::BadKey { table: table.name.clone(), message };
    // Parsed as it will be read (standard_conforming_strings on); a syntax error is the key's.
    match in_subtransaction(|| with_pinned(|| one_expression(key))) {
        Ok(true) => {}
        Ok(false) => return Err(bad("it closes a parenthesis it did not open, or is empty".into()).into()),
        Err(message) => return Err(bad(message).into()),
    }
    let tried = in_subtransaction(|| sandboxed_with_path(owner, search_path, || Spi::connect(|client| client.select(&sql, None, &[]).map(|_| ()))));
    match tried {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(bad(e.to_string()).into()),
        Err(message) => Err(bad(message).into()),
    }
}

/// Whether `key` is one expression and nothing else: `SELECT (<key>)` parses as one
/// plain SELECT of one column, with no FROM, WHERE, set operation or other clause (a key
/// such as `id), (1` or `id) FROM t UNION SELECT (1` would otherwise pass for one).
/// A syntax error is raised.
fn one_expression(key: &str) -> bool {
    if key.trim().is_empty() {
        return false;
    }
    let text = std::ffi::CString::new(format!("SELECT ({key})")).unwrap_or_default();
    unsafe {
        let list = pg_sys::raw_parser(text.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if list.is_null() || (*list).length != 1 {
            return false;
        }
        let raw = pg_sys::list_nth(list, 0) as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
            return false;
        }
        let s = stmt as *mut pg_sys::SelectStmt;
        let s = &*s;
        let length = |l: *mut pg_sys::List| if l.is_null() { 0 } else { (*l).length };
        s.op == pg_sys::SetOperation::SETOP_NONE
            && length(s.targetList) == 1
            && [s.distinctClause, s.fromClause, s.groupClause, s.windowClause, s.valuesLists, s.sortClause, s.lockingClause]
                .iter()
                .all(|l| l.is_null())
            && s.intoClause.is_null()
            && s.whereClause.is_null()
            && s.havingClause.is_null()
            && s.limitOffset.is_null()
            && s.limitCount.is_null()
            && s.withClause.is_null()
    }
}

/// The triggers of a watch, `vitally_watch_<id>_<suffix>`: one per event (Postgres takes
/// transition tables only on a trigger of one event), and one for TRUNCATE.
const TRIGGERS: [(&str, &str, &str); 4] = [
    ("insert", "INSERT", "REFERENCING NEW TABLE AS vitally_new"),
    ("update", "UPDATE", "REFERENCING OLD TABLE AS vitally_old NEW TABLE AS vitally_new"),
    ("delete", "DELETE", "REFERENCING OLD TABLE AS vitally_old"),
    ("truncate", "TRUNCATE", ""),
];

/// Creates the triggers of watch `id` on `table`.
pub fn create_triggers(client: &mut SpiClient<'_>, id: i64, table: &Table) -> Result<()> {
    for (suffix, event, referencing) in TRIGGERS {
        client.update(
            &format!(
                "CREATE TRIGGER vitally_watch_{id}_{suffix} AFTER {event} ON {} {referencing} FOR EACH STATEMENT EXECUTE FUNCTION vitally.watch_trigger('{id}')",
                table.name
            ),
            None,
            &[],
        )?;
    }
    Ok(())
}

/// Drops the triggers of the watches `ids` wherever they are (a table dropped since
/// took them with it).
pub fn drop_triggers(client: &mut SpiClient<'_>, ids: &[i64]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = ids.iter().flat_map(|id| TRIGGERS.map(|(suffix, _, _)| format!("vitally_watch_{id}_{suffix}"))).collect();
    let found = client.select(
        "SELECT pg_catalog.format('DROP TRIGGER %I ON %I.%I', t.tgname, n.nspname, c.relname) AS stmt
           FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE t.tgname = ANY ($1) AND t.tgfoid = 'vitally.watch_trigger()'::pg_catalog.regprocedure",
        None,
        &[names.into()],
    )?;
    let mut statements = Vec::new();
    for row in found {
        statements.push(row.get_by_name::<String, _>("stmt")?.unwrap_or_default());
    }
    for s in statements {
        client.update(&s, None, &[])?;
    }
    Ok(())
}
