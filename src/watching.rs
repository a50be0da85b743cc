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
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

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
    #[error("sync \"{0}\" has delivered nothing yet, so there are no keys to explain with")]
    NoKeysToExplain(String),
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
            NoKeysToExplain(name) => (
                C::ERRCODE_INVALID_PARAMETER_VALUE,
                Some(format!("Name some: SELECT * FROM vitally.explain_live('{name}', keys => ARRAY['a key', 'another']);")),
            ),
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

/// A key that is a plain column whose output is its `::text`: read straight from the
/// transition tables, with no SQL (what most watches are, at a writer's cost of
/// microseconds). Found in the relation as the statement sees it, never cached: a column
/// retyped or renamed since is read as it is now.
struct KeyColumn {
    attnum: i16,
    output: pg_sys::Oid,
}

thread_local! {
    /// The watches this backend's triggers fired for, until the watched table's relcache
    /// entry is invalidated: creating or dropping triggers does that (watch, unwatch,
    /// drop_sync), `watch()` does it when it changes a key, and so does any ALTER TABLE.
    static WATCHES: RefCell<HashMap<i64, Rc<Watch>>> = RefCell::new(HashMap::new());
    static FORGETTING: Cell<bool> = const { Cell::new(false) };
}

/// Appends the marks to `vitally.change` as Postgres's own code appends catalog rows:
/// straight into the heap (logged, counted, visible at commit like any insert), with no
/// SQL, no planning and no switch of user, which a writer would pay after every
/// statement. The values are ours; the table has no index, trigger, rule or check to
/// keep. Returns false, having written nothing, if it has one now (then SQL does it).
unsafe fn append_marks(watch_id: i64, sync_id: i64, keys: Option<&[String]>) -> Result<bool> {
    let schema = pg_sys::get_namespace_oid(c"vitally".as_ptr(), false);
    let relid = pg_sys::get_relname_relid(c"change".as_ptr(), schema);
    if relid == pg_sys::InvalidOid {
        return Err(crate::errors::Internal::Broken("table vitally.change is missing".into()).into());
    }
    let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
    let desc = (*rel).rd_att;
    let plain = !(*(*rel).rd_rel).relhasindex
        && (*(*rel).rd_rel).relkind == pg_sys::RELKIND_RELATION as std::ffi::c_char
        && (*rel).trigdesc.is_null()
        && (*rel).rd_rules.is_null()
        && ((*desc).constr.is_null() || (*(*desc).constr).num_check == 0)
        && (*desc).natts == 4
        && [pg_sys::INT8OID, pg_sys::INT8OID, pg_sys::TEXTOID, pg_sys::TIMESTAMPTZOID].iter().enumerate().all(|(i, &t)| {
            let att = &*(*desc).attrs.as_ptr().add(i);
            att.atttypid == t && !att.attisdropped
        });
    if !plain {
        pg_sys::table_close(rel, pg_sys::RowExclusiveLock as i32);
        return Ok(false);
    }
    let now = pg_sys::GetCurrentTimestamp();
    let mut values = [pg_sys::Datum::from(watch_id), pg_sys::Datum::from(sync_id), pg_sys::Datum::from(0usize), pg_sys::Datum::from(now)];
    let mut nulls = [false, false, true, false];
    let mut append = |key: Option<&str>| {
        let text = key.map(|k| pg_sys::cstring_to_text_with_len(k.as_ptr().cast(), k.len() as i32));
        values[2] = text.map(pg_sys::Datum::from).unwrap_or(pg_sys::Datum::from(0usize));
        nulls[2] = text.is_none();
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::simple_heap_insert(rel, tuple);
        pg_sys::heap_freetuple(tuple);
        if let Some(t) = text {
            pg_sys::pfree(t.cast());
        }
    };
    match keys {
        Some(keys) => keys.iter().for_each(|k| append(Some(k))),
        None => append(None),
    }
    // The lock is held to the end of the transaction, as for any insert.
    pg_sys::table_close(rel, pg_sys::NoLock as i32);
    Ok(true)
}

#[pg_guard]
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    WATCHES.with(|w| {
        if let Ok(mut w) = w.try_borrow_mut() {
            if relid == pg_sys::InvalidOid {
                w.clear();
            } else {
                w.retain(|_, watch| watch.relid != relid);
            }
        }
    });
}

fn cached(watch_id: i64) -> Result<Option<Rc<Watch>>> {
    if let Some(w) = WATCHES.with(|w| w.borrow().get(&watch_id).cloned()) {
        return Ok(Some(w));
    }
    if !FORGETTING.replace(true) {
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(forget), pg_sys::Datum::from(0)) };
    }
    let found = as_extension_owner(|| Spi::connect(|client| find(client, watch_id)))?.map(Rc::new);
    // Read with the transaction's snapshot: under REPEATABLE READ that may be older than
    // a watch() that changed the key (and whose invalidation came first), so kept only
    // for this statement.
    let repeatable = unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32;
    if let (Some(w), false) = (&found, repeatable) {
        WATCHES.with(|all| all.borrow_mut().insert(watch_id, w.clone()));
    }
    Ok(found)
}

/// Types whose output function gives what `::pg_catalog.text` gives.
const TEXT_IS_OUTPUT: [pg_sys::Oid; 7] =
    [pg_sys::INT2OID, pg_sys::INT4OID, pg_sys::INT8OID, pg_sys::TEXTOID, pg_sys::VARCHAROID, pg_sys::UUIDOID, pg_sys::NUMERICOID];

/// The column `key` names in `rel`, if the key is a plain column (an identifier that
/// needs no quoting: not a keyword, so `user` stays SQL) of one of those types, in a
/// UTF-8 database (elsewhere the SQL path decodes the text as it must).
unsafe fn plain_column(rel: pg_sys::Relation, key: &str) -> Option<KeyColumn> {
    if pg_sys::GetDatabaseEncoding() != pg_sys::pg_enc::PG_UTF8 as i32 {
        return None;
    }
    let name = std::ffi::CString::new(key).ok()?;
    if std::ffi::CStr::from_ptr(pg_sys::quote_identifier(name.as_ptr())) != name.as_c_str() {
        return None;
    }
    let desc = (*rel).rd_att;
    for i in 0..(*desc).natts as usize {
        let att = &*(*desc).attrs.as_ptr().add(i);
        if att.attisdropped || std::ffi::CStr::from_ptr(att.attname.data.as_ptr()) != name.as_c_str() {
            continue;
        }
        if !TEXT_IS_OUTPUT.contains(&att.atttypid) {
            return None;
        }
        let (mut output, mut varlena) = (pg_sys::InvalidOid, false);
        pg_sys::getTypeOutputInfo(att.atttypid, &mut output, &mut varlena);
        return Some(KeyColumn { attnum: att.attnum, output });
    }
    None
}

/// Beyond this many distinct keys in one statement, the sync is marked for a plan of
/// every key instead (the keys are held in memory until the statement's marks are written).
const MOST_KEYS: usize = 100_000;

/// Tells every backend that cached the watches of `relid` to read them again.
pub fn forget_watches_of(relid: pg_sys::Oid) {
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
}

/// The distinct non-NULL values of `column` in the statement's transition tables, as
/// text, through a read pointer of our own (other triggers read the same stores).
/// None: more than `MOST_KEYS`, or not UTF-8 after all.
unsafe fn column_keys(data: &pg_sys::TriggerData, column: &KeyColumn) -> Option<Vec<String>> {
    let desc = (*data.tg_relation).rd_att;
    let mut keys = std::collections::HashSet::new();
    for store in [data.tg_oldtable, data.tg_newtable] {
        if store.is_null() {
            continue;
        }
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, &raw const pg_sys::TTSOpsMinimalTuple);
        let reader = pg_sys::tuplestore_alloc_read_pointer(store, pg_sys::EXEC_FLAG_REWIND as i32);
        pg_sys::tuplestore_select_read_pointer(store, reader);
        pg_sys::tuplestore_rescan(store);
        while pg_sys::tuplestore_gettupleslot(store, true, false, slot) {
            let mut isnull = false;
            let value = pg_sys::slot_getattr(slot, column.attnum as i32, &mut isnull);
            if !isnull {
                let text = pg_sys::OidOutputFunctionCall(column.output, value);
                let key = std::str::from_utf8(std::ffi::CStr::from_ptr(text).to_bytes()).map(str::to_string);
                pg_sys::pfree(text.cast());
                match key {
                    Ok(key) if keys.len() < MOST_KEYS || keys.contains(&key) => {
                        keys.insert(key);
                    }
                    _ => {
                        pg_sys::ExecDropSingleTupleTableSlot(slot);
                        return None;
                    }
                }
            }
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
    }
    Some(keys.into_iter().collect())
}

fn mark(trigger: &PgTrigger<'_>) -> Result<()> {
    let args = trigger.extra_args().unwrap_or_default();
    let Some(watch_id) = args.first().and_then(|a| a.parse::<i64>().ok()) else {
        return Err(WatchError::ForeignTrigger.into());
    };
    let data = trigger.trigger_data();
    let event = data.tg_event;
    // A watch dropped in this transaction, or a trigger left behind by hand: nothing to mark.
    let Some(watch) = cached(watch_id)? else {
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
    } else if let Some(column) = unsafe { plain_column(data.tg_relation, &watch.key) } {
        unsafe { column_keys(data, &column) }
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
    if !unsafe { append_marks(watch_id, watch.sync_id, keys.as_deref()) }? {
        // vitally.change is not as shipped (an index, a trigger someone added): by SQL.
        as_extension_owner(|| {
            Spi::connect_mut(|client| {
                client.update(
                    "INSERT INTO vitally.change (watch_id, sync_id, sync_key) SELECT $1, $2, k FROM pg_catalog.unnest(coalesce($3, ARRAY[NULL]::pg_catalog.text[])) k",
                    None,
                    &[watch_id.into(), watch.sync_id.into(), keys.into()],
                )?;
                Ok(())
            })
        })?;
    }
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
        crate::roster::ring_live();
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
