//! Planning a run: the sync's query, run as its owner, becomes records in a
//! temporary table (payload, hash, what is wrong), built by Postgres from the SQL
//! the planner crate renders, in one pass that compares each row with what was
//! delivered as it goes (`comparison.rs`). No row of the result is held in Rust
//! memory; the hashes of the delivered keys are, for the pass.

use crate::catalog::{DestinationRow, SyncRow};
use crate::elevation::{as_extension_owner, sandboxed, with_settings};
use crate::errors::{report, Result, Row};
use crate::progress::Progress;
use crate::queue::Staged;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use vitally_model::{check_pair, Behavior, KeyNeeded, Object};
use vitally_planner::compare::Against;
use vitally_planner::{plan, Column, ColumnType, Options, Plan};

/// What a user can get wrong about a sync's definition or query (besides what the
/// planner crate's `PlanError` says).
#[derive(Debug, thiserror::Error)]
pub enum PlanningError {
    #[error("sync \"{sync}\" needs {which}, and destination \"{destination}\" has none")]
    NeedsKey { sync: String, which: &'static str, destination: String, arg: &'static str },
    #[error("option unlink_removed_accounts applies to user syncs only")]
    UnlinkNotUser,
    #[error("the query of sync \"{0}\" is empty")]
    EmptyQuery(String),
    #[error("the query of sync \"{0}\" is not one SELECT statement")]
    NotOneStatement(String),
    #[error("the query of sync \"{sync}\" failed: {message}")]
    QueryFailed { sync: String, code: PgSqlErrorCode, message: String, hint: Option<String> },
    #[error("the sync's owner no longer exists")]
    OwnerGone,
}

impl From<PlanningError> for ErrorReport {
    fn from(e: PlanningError) -> Self {
        use PgSqlErrorCode as C;
        use PlanningError::*;
        let (code, hint) = match &e {
            NeedsKey { destination, arg, .. } => (
                C::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                Some(format!("SELECT vitally.alter_destination('{}', {arg} => '...');", destination.replace('\'', "''"))),
            ),
            UnlinkNotUser => (C::ERRCODE_INVALID_PARAMETER_VALUE, Some("Remove it from the options of this sync.".into())),
            EmptyQuery(_) => (C::ERRCODE_INVALID_PARAMETER_VALUE, Some("Give a SELECT whose rows are the records to send.".into())),
            NotOneStatement(_) => (C::ERRCODE_SYNTAX_ERROR, Some("Give one query, without a semicolon in the middle; it runs as a subquery.".into())),
            QueryFailed { code, message, hint, .. } => (
                *code,
                hint.clone().or_else(|| {
                    if message.contains("data-modifying") {
                        Some("A sync's query only reads: change data in a statement of its own, before vitally.sync().".into())
                    } else if *code == C::ERRCODE_INSUFFICIENT_PRIVILEGE {
                        Some("The query runs with the privileges of the sync's owner: GRANT SELECT on what it reads to that role.".into())
                    } else {
                        None
                    }
                }),
            ),
            OwnerGone => (C::ERRCODE_UNDEFINED_OBJECT, None),
        };
        report(code, e.to_string(), hint)
    }
}

/// What a sync is, checked and resolved against its query's columns.
pub struct Prepared {
    pub object: Object,
    pub behavior: Behavior,
    pub options: Options,
    pub plan: Plan,
    /// The SQL name of the sync key column's type, for a re-plan of some keys.
    pub key_type: String,
}

/// Checks a sync definition: the pair, the key it needs, the options, the query and
/// the mapping. `run_as` is the role whose privileges the query runs with.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    sync_name: &str,
    destination: &DestinationRow,
    object: Object,
    behavior: Behavior,
    query: &str,
    sync_key: &str,
    mappings: Option<&serde_json::Value>,
    options: &serde_json::Value,
    run_as: pg_sys::Oid,
) -> Result<Prepared> {
    let needed = check_pair(object, behavior)?.key();
    require_key(sync_name, destination, needed)?;
    let options = Options::parse(Some(options))?;
    if options.unlink_removed_accounts && object != Object::User {
        return Err(PlanningError::UnlinkNotUser.into());
    }
    let described = describe(sync_name, query, run_as)?;
    let columns: Vec<Column> = described.iter().map(|(c, _)| c.clone()).collect();
    let plan = plan(object, behavior, sync_key, &columns, mappings)?;
    let key_oid = described.iter().find(|(c, _)| c.name == plan.key.name).map(|(_, oid)| *oid).unwrap_or(pg_sys::TEXTOID);
    // From the catalog cache, schema-qualified: the same type whatever the search_path.
    let key_type = unsafe { std::ffi::CStr::from_ptr(pg_sys::format_type_be_qualified(key_oid)).to_string_lossy().into_owned() };
    Ok(Prepared { object, behavior, options, plan, key_type })
}

/// Prepares a stored sync for a run or a preview.
pub fn prepare_stored(sync: &SyncRow) -> Result<Prepared> {
    prepare(&sync.name, &sync.destination, sync.object, sync.behavior, &sync.query, &sync.sync_key, sync.mappings.as_ref(), &sync.options, sync.owner)
}

fn require_key(sync_name: &str, destination: &DestinationRow, needed: KeyNeeded) -> Result<()> {
    let (has, which, arg) = match needed {
        KeyNeeded::Analytics => (destination.has_analytics_key, "the Analytics API key", "analytics_api_key"),
        KeyNeeded::Rest => (destination.has_rest_key, "the REST API key", "rest_api_key"),
    };
    if has {
        return Ok(());
    }
    Err(PlanningError::NeedsKey { sync: sync_name.to_string(), which, destination: destination.name.clone(), arg }.into())
}

/// Wraps the user's query so that its columns can be read; refuses anything that
/// is not exactly one statement once wrapped (a query that closes our parenthesis).
fn wrapped(query: &str, limit: &str) -> String {
    format!("SELECT * FROM (\n{query}\n) q{limit}")
}

fn single_statement(sync_name: &str, sql: &str) -> Result<()> {
    if with_query_errors(sync_name, || statements(sql)) != 1 {
        return Err(PlanningError::NotOneStatement(sync_name.to_string()).into());
    }
    Ok(())
}

/// How many statements `sql` is, as Postgres's parser reads it (a syntax error is raised).
fn statements(sql: &str) -> i32 {
    unsafe {
        let text = std::ffi::CString::new(sql).unwrap_or_default();
        let list = pg_sys::raw_parser(text.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if list.is_null() {
            0
        } else {
            (*list).length
        }
    }
}

/// The query's columns, learned by running it with `LIMIT 0` as `run_as`, sandboxed: a
/// query that does not parse, or reads what that role may not, fails here.
pub fn describe(sync_name: &str, query: &str, run_as: pg_sys::Oid) -> Result<Vec<(Column, pg_sys::Oid)>> {
    if query.trim().is_empty() {
        return Err(PlanningError::EmptyQuery(sync_name.to_string()).into());
    }
    let sql = wrapped(query, " LIMIT 0");
    single_statement(sync_name, &sql)?;
    let described: Vec<(String, pg_sys::Oid)> = sandboxed(run_as, || {
        with_query_errors(sync_name, || {
            Spi::connect(|client| -> Result<_> {
                let table = client.select(&sql, None, &[])?;
                let n = table.columns()?;
                // The descriptor of the result just read: names and types.
                let desc = unsafe { (*pg_sys::SPI_tuptable).tupdesc };
                Ok((0..n)
                    .map(|i| unsafe {
                        let att = &*(*desc).attrs.as_ptr().add(i);
                        let name = std::ffi::CStr::from_ptr(att.attname.data.as_ptr()).to_string_lossy().into_owned();
                        (name, att.atttypid)
                    })
                    .collect())
            })
        })
    })?;
    Ok(described.into_iter().map(|(name, oid)| (Column { name, ty: column_type(oid), hashable: hashable(oid) }, oid)).collect())
}

fn column_type(oid: pg_sys::Oid) -> ColumnType {
    let base = unsafe { pg_sys::getBaseType(oid) };
    match base {
        pg_sys::TIMESTAMPTZOID => ColumnType::TimestampTz,
        pg_sys::TIMESTAMPOID => ColumnType::Timestamp,
        pg_sys::JSONOID | pg_sys::JSONBOID => ColumnType::Json,
        _ if unsafe { pg_sys::get_element_type(base) } != pg_sys::InvalidOid => ColumnType::Array,
        _ => ColumnType::Other,
    }
}

/// Whether Postgres has an extended hash function for the type (arrays and
/// composites: for their elements too).
fn hashable(oid: pg_sys::Oid) -> bool {
    unsafe {
        let entry = pg_sys::lookup_type_cache(oid, pg_sys::TYPECACHE_HASH_EXTENDED_PROC as i32);
        !entry.is_null() && (*entry).hash_extended_proc != pg_sys::InvalidOid
    }
}

/// Runs `f`, turning an error of the user's query into one that names the sync
/// (keeping its SQLSTATE, e.g. 42501 for permission denied). This one is raised at
/// once, not returned: after an ERROR only the abort of the transaction cleans up
/// (the executor's state, the switched user), so nothing may run before it.
pub fn with_query_errors<R>(sync_name: &str, f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    PgTryBuilder::new(f)
        .catch_others(|e| {
            let caught = crate::errors::caught(&e);
            let error = PlanningError::QueryFailed {
                sync: sync_name.to_string(),
                code: caught.sql_error_code(),
                message: caught.message().to_string(),
                hint: caught.hint().map(String::from),
            };
            ErrorReport::from(error).report(PgLogLevel::ERROR);
            unreachable!("ERROR does not return")
        })
        .execute()
}

/// Settings for the set-based statements of a run, for their duration only.
/// Hashing a million keys fits in 64 MB (the default 4 MB spills to disk). No nested
/// loops: the queue's statistics can say "empty" while it is not (or stops being so
/// during the statement), and a nested loop rescanning it would make queueing quadratic.
pub const PLANNING_SETTINGS: &[(&std::ffi::CStr, &std::ffi::CStr)] = &[(c"work_mem", c"64MB"), (c"enable_nestloop", c"off")];

/// What a planning pass is for.
#[derive(Clone, Copy)]
pub enum Pass<'a> {
    /// A run: only rows that changed (or all, with `full_resync`) become records.
    Run { full_resync: bool },
    /// A live re-plan: as a run, of the rows with these keys only (what watches marked).
    Keys(&'a [String]),
    /// A preview of the first `limit` rows: every one becomes a record, to be shown.
    Preview { limit: i64 },
}

/// Builds a run's records in `RECORDS` (`sync_key, hash, payload, error`), returning
/// how many rows the query gave. Nothing a user chose ever runs as the extension's owner:
///
/// 1. As the extension's owner: `RECORDS` and `REPEATS`, created empty, the sync's
///    owner allowed to fill them; what was delivered for the sync read into memory
///    (`comparison`), unless every row is to be sent.
/// 2. Sandboxed as the sync's owner, one statement: the query's rows, each hashed and
///    compared with what was delivered as it goes by; only rows that changed (new,
///    invalid) are made into JSON, checked and written. This is where casts and output
///    functions of the user's types run.
/// 3. Only if some key appeared more than once (an invalid sync): the rows written for
///    those keys removed, and every row of them written again by a second run of the
///    query, so that each becomes an invalid record.
///    What is wrong with each of those records is said again, knowing how often its
///    key repeats (as the extension's owner, over `jsonb` and `text` only).
pub fn stage(sync: &SyncRow, prepared: &Prepared, pass: Pass, progress: &mut Progress) -> Result<Staged> {
    single_statement(&sync.name, &wrapped(&sync.query, ""))?;
    drop_stage()?;
    let fingerprint = prepared.plan.fingerprint(&prepared.options);
    let seed: i64 = crate::elevation::with_pinned(|| {
        Spi::connect(|client| -> Result<i64> {
            Ok(client
                .select("SELECT pg_catalog.hashtextextended($1, 0) AS seed", Some(1), &[fingerprint.as_str().into()])?
                .first()
                .required("seed")?)
        })
    })?;
    let (limit, keys) = match pass {
        Pass::Preview { limit } => (Some(limit), None),
        Pass::Run { .. } => (None, None),
        Pass::Keys(keys) => (None, Some(keys)),
    };
    create_tables(sync.owner)?;
    let against = match (pass, prepared.behavior) {
        (Pass::Run { full_resync: false } | Pass::Keys(_), Behavior::Append) => Against::Keys,
        (Pass::Run { full_resync: false } | Pass::Keys(_), _) => Against::Values,
        _ => Against::Nothing,
    };
    crate::comparison::begin(sync.id, against, keys, matches!(pass, Pass::Run { .. }))?;
    let fill = format!(
        "INSERT INTO {RECORDS} (sync_key, hash, payload, error) {}",
        prepared.plan.records_sql(&sync.query, seed, limit, keys.map(|_| prepared.key_type.as_str()), crate::comparison::ADMIT, &prepared.options)
    );
    let run_query = || {
        sandboxed(sync.owner, || {
            with_query_errors(&sync.name, || {
                Spi::connect_mut(|client| -> Result<()> {
                    match keys {
                        Some(keys) => client.update(&fill, None, &[keys.to_vec().into()])?,
                        None => client.update(&fill, None, &[])?,
                    };
                    Ok(())
                })
            })
        })
    };
    run_query()?;
    let (repeats, rows) = crate::comparison::repeats();
    crate::comparison::keep_order(sync.id)?;
    progress.phase(|| format!("ran the query and compared it with what was delivered: {rows} rows"));
    let repeated = !repeats.is_empty();
    if repeated {
        // Rare (the sync is invalid until fixed), so a second run of the query is fine.
        as_extension_owner(|| {
            Spi::connect_mut(|client| {
                client.update(
                    &format!("DELETE FROM {RECORDS} WHERE pg_catalog.hashtextextended(sync_key, 0) = ANY($1)"),
                    None,
                    &[repeats.clone().into()],
                )?;
                Ok(())
            })
        })?;
        run_query()?;
        as_extension_owner(|| {
            Spi::connect_mut(|client| {
                client.update(
                    &format!(
                        "INSERT INTO {REPEATS} (sync_key, n)
                         SELECT sync_key, pg_catalog.count(*) FROM {RECORDS}
                          WHERE pg_catalog.hashtextextended(sync_key, 0) = ANY($1) GROUP BY sync_key HAVING pg_catalog.count(*) > 1"
                    ),
                    None,
                    &[repeats.into()],
                )?;
                Ok(())
            })
        })?;
    }
    crate::comparison::finish()?;
    as_extension_owner(|| {
        Spi::run(&format!("ANALYZE {RECORDS} (sync_key, hash)"))?;
        if repeated {
            with_settings(PLANNING_SETTINGS, || Spi::run(&format!("ANALYZE {REPEATS}; {}", prepared.plan.repeats_sql(RECORDS, REPEATS))))?;
        }
        Ok(())
    })?;
    if progress.speaks() {
        let n = as_extension_owner(|| Ok(Spi::get_one::<i64>(&format!("SELECT pg_catalog.count(*) FROM {RECORDS}"))?))?;
        progress.phase(|| format!("made {} records of rows new, changed or invalid", n.unwrap_or(0)));
    } else {
        progress.phase(String::new);
    }
    Ok(Staged {
        sync_id: sync.id,
        destination: sync.destination.name.clone(),
        behavior: prepared.behavior,
        unlink_removed_accounts: prepared.options.unlink_removed_accounts,
        rows,
        table: RECORDS,
    })
}

/// A run of `sync`: planned (all its rows, or the keys of a live re-plan), queued,
/// finished if nothing was queued; the worker is woken when the transaction commits.
/// A run of every row also takes every mark its watches made before it: it sees
/// those changes. `live`: the live planner asked for it (it took the marks itself).
/// Returns the run's id.
pub fn run(sync: &SyncRow, pass: Pass, live: bool, progress: &mut Progress) -> Result<i64> {
    let prepared = prepare_stored(sync)?;
    let (full_resync, live) = match pass {
        Pass::Run { full_resync } => (full_resync, live),
        _ => (false, true),
    };
    let run_id = as_extension_owner(|| {
        Spi::connect_mut(|client| {
            if !live {
                client.update("DELETE FROM vitally.change WHERE sync_id = $1", None, &[sync.id.into()])?;
            }
            crate::queue::start_run(client, sync.id, full_resync, false, live)
        })
    })?;
    let staged = stage(sync, &prepared, pass, progress)?;
    let done = as_extension_owner(|| with_settings(PLANNING_SETTINGS, || Spi::connect_mut(|client| crate::queue::enqueue(client, &staged, run_id))))?;
    progress.phase(|| {
        format!("queued {} records, {} invalid, {} unchanged; run {run_id}", done.queued, done.invalid, staged.rows - done.queued - done.invalid)
    });
    drop_stage()?;
    as_extension_owner(|| Spi::connect_mut(|client| crate::queue::finish_if_done(client, &[run_id])))?;
    crate::doorbell::wake_on_commit();
    Ok(run_id)
}

/// The tables of a pass, owned by the extension's owner (so no other role can alter
/// them); the sync's owner may only fill and read them.
fn create_tables(owner: pg_sys::Oid) -> Result<()> {
    as_extension_owner(|| {
        Spi::run(&format!(
            "CREATE TEMP TABLE {REPEATS} (sync_key pg_catalog.text COLLATE pg_catalog.\"C\", n pg_catalog.int8) ON COMMIT DROP;
             CREATE TEMP TABLE {RECORDS} (sync_key pg_catalog.text COLLATE pg_catalog.\"C\", hash pg_catalog.int8, payload pg_catalog.jsonb, error pg_catalog.text) ON COMMIT DROP;"
        ))?;
        if !unsafe { pg_sys::superuser_arg(owner) } {
            let role =
                Spi::get_one_with_args::<String>("SELECT pg_catalog.quote_ident(rolname) FROM pg_catalog.pg_authid WHERE oid = $1", &[owner.into()])?
                    .ok_or(PlanningError::OwnerGone)?;
            Spi::run(&format!("GRANT INSERT ON {RECORDS} TO {role}"))?;
        }
        Ok(())
    })
}

/// The temporary tables of a planning pass: the records, and the keys that repeat
/// (with how many rows each has).
const REPEATS: &str = "pg_temp.vitally_keys";
const RECORDS: &str = "pg_temp.vitally_records";

pub fn drop_stage() -> Result<()> {
    as_extension_owner(|| {
        for table in [REPEATS, RECORDS] {
            // Looked up first: DROP ... IF EXISTS would tell the user about it in a NOTICE.
            if Spi::get_one::<bool>(&format!("SELECT pg_catalog.to_regclass('{table}') IS NOT NULL"))? == Some(true) {
                Spi::run(&format!("DROP TABLE {table}"))?;
            }
        }
        Ok(())
    })
}
