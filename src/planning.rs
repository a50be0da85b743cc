//! Planning a run: the sync's query, run as its owner, becomes records in a
//! temporary table (payload, hash, what is wrong), built by Postgres from the SQL
//! the planner crate renders. Nothing of the result is held in Rust memory.

use crate::catalog::SyncRow;
use crate::progress::Progress;
use crate::elevation::{as_role, with_settings};
use crate::errors::{OrRaise, UserError};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use vitally_planner::definition::{check_pair, KeyNeeded};
use vitally_planner::{plan, Behavior, Column, ColumnType, Object, Options, Plan};


/// The temporary table a run's records are built in; dropped at commit at the latest.
pub const STAGE: &str = "pg_temp.vitally_stage";

/// What a sync is, checked and resolved against its query's columns.
pub struct Prepared {
    pub object: Object,
    pub behavior: Behavior,
    pub options: Options,
    pub plan: Plan,
}

/// Checks a sync definition: the pair, the key it needs, the options, the query and
/// the mapping. `run_as` is the role whose privileges the query runs with.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    sync_name: &str,
    destination: &crate::catalog::DestinationRow,
    object: &str,
    behavior: &str,
    query: &str,
    sync_key: &str,
    mappings: Option<&serde_json::Value>,
    options: &serde_json::Value,
    run_as: pg_sys::Oid,
) -> Prepared {
    let object = Object::parse(object).or_raise();
    let behavior = Behavior::parse(behavior).or_raise();
    let needed = check_pair(object, behavior).or_raise();
    require_key(sync_name, destination, needed);
    let options = Options::parse(Some(options)).or_raise();
    if options.unlink_removed_accounts && object != Object::User {
        UserError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "option unlink_removed_accounts applies to user syncs only")
            .hint("Remove it from the options of this sync.")
            .raise();
    }
    let columns = describe(sync_name, query, run_as);
    let plan = plan(object, sync_key, &columns, mappings).or_raise();
    Prepared { object, behavior, options, plan }
}

/// Prepares a stored sync for a run or a preview.
pub fn prepare_stored(sync: &SyncRow) -> Prepared {
    prepare(&sync.name, &sync.destination, &sync.object, &sync.behavior, &sync.query, &sync.sync_key, sync.mappings.as_ref(), &sync.options, sync.owner)
}

fn require_key(sync_name: &str, destination: &crate::catalog::DestinationRow, needed: KeyNeeded) {
    let (has, which, arg) = match needed {
        KeyNeeded::Analytics => (destination.has_analytics_key, "the Analytics API key", "analytics_api_key"),
        KeyNeeded::Rest => (destination.has_rest_key, "the REST API key", "rest_api_key"),
    };
    if !has {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("sync \"{sync_name}\" needs {which}, and destination \"{}\" has none", destination.name),
        )
        .hint(format!("SELECT vitally.alter_destination('{}', {arg} => '...');", destination.name.replace('\'', "''")))
        .raise();
    }
}

/// Wraps the user's query so that its columns can be read; refuses anything that
/// is not exactly one statement once wrapped (a query that closes our parenthesis).
fn wrapped(query: &str, limit: &str) -> String {
    format!("SELECT * FROM (\n{query}\n) q{limit}")
}

fn single_statement(sync_name: &str, sql: &str) {
    let count = with_query_errors(sync_name, || unsafe {
        let text = std::ffi::CString::new(sql).unwrap_or_default();
        let list = pg_sys::raw_parser(text.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if list.is_null() { 0 } else { (*list).length }
    });
    if count != 1 {
        UserError::new(PgSqlErrorCode::ERRCODE_SYNTAX_ERROR, format!("the query of sync \"{sync_name}\" is not one SELECT statement"))
            .hint("Give one query, without a semicolon in the middle; it runs as a subquery.")
            .raise();
    }
}

/// The query's columns, learned by running it with `LIMIT 0` as `run_as`: a query
/// that does not parse, or reads what that role may not, fails here.
pub fn describe(sync_name: &str, query: &str, run_as: pg_sys::Oid) -> Vec<Column> {
    if query.trim().is_empty() {
        UserError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("the query of sync \"{sync_name}\" is empty"))
            .hint("Give a SELECT whose rows are the records to send.")
            .raise();
    }
    let sql = wrapped(query, " LIMIT 0");
    single_statement(sync_name, &sql);
    as_role(run_as, || {
        with_query_errors(sync_name, || {
            Spi::connect(|client| {
                let table = client.select(&sql, None, &[]).unwrap_or_else(|e| crate::catalog::internal(e));
                let n = table.columns().unwrap_or(0);
                (1..=n)
                    .map(|i| {
                        let oid = table.column_type_oid(i).map(|o| o.value()).unwrap_or(pg_sys::InvalidOid);
                        Column { name: table.column_name(i).unwrap_or_default(), ty: column_type(oid), hashable: hashable(oid) }
                    })
                    .collect()
            })
        })
    })
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
/// (keeping its SQLSTATE, e.g. 42501 for permission denied).
pub fn with_query_errors<R>(sync_name: &str, f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    PgTryBuilder::new(f)
        .catch_others(|e| {
            let report = match &e {
                CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
                CaughtError::RustPanic { ereport, .. } => ereport,
            };
            let mut err = UserError::new(report.sql_error_code(), format!("the query of sync \"{sync_name}\" failed: {}", report.message()));
            if let Some(h) = report.hint() {
                err = err.hint(h.to_string());
            } else if report.message().contains("data-modifying") {
                err = err.hint("A sync's query only reads: change data in a statement of its own, before vitally.sync().");
            } else if report.sql_error_code() == PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE {
                err = err.hint("The query runs with the privileges of the sync's owner: GRANT SELECT on what it reads to that role.");
            }
            err.raise()
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
pub enum Pass {
    /// A run: only rows that changed (or all, with `full_resync`) become records.
    Run { full_resync: bool },
    /// A preview of the first `limit` rows: every one becomes a record, to be shown.
    Preview { limit: i64 },
}

/// Builds a run's records in `RECORDS` (`sync_key, hash, payload, error`), returning
/// how many rows the query gave.
///
/// Phase one runs the query as the sync's owner into `STAGE`: key, hash of the
/// mapped values, the values. Phase two, as the extension's owner, compares hashes
/// with what was delivered, finds the keys that repeat, and makes records (JSON,
/// checks) of the rows that need sending only: most rows of most runs are unchanged.
pub fn stage(sync: &SyncRow, prepared: &Prepared, pass: Pass, progress: &mut Progress) -> i64 {
    single_statement(&sync.name, &wrapped(&sync.query, ""));
    drop_stage();
    let fingerprint = prepared.plan.fingerprint(&prepared.options);
    let seed = Spi::get_one_with_args::<i64>("SELECT pg_catalog.hashtextextended($1, 0)", &[fingerprint.as_str().into()])
        .unwrap_or_else(|e| crate::catalog::internal(e))
        .unwrap_or(0);
    let limit = match pass {
        Pass::Preview { limit } => Some(limit),
        Pass::Run { .. } => None,
    };
    let create = format!("CREATE TEMP TABLE vitally_stage ON COMMIT DROP AS {}", prepared.plan.stage_sql(&sync.query, seed, limit));
    let rows = as_role(sync.owner, || {
        with_query_errors(&sync.name, || {
            Spi::connect_mut(|client| client.update(&create, None, &[]).unwrap_or_else(|e| crate::catalog::internal(e)).len() as i64)
        })
    });
    progress.phase(|| format!("ran the query: {rows} rows"));
    // Whether some rows may be unchanged: not on a sync's first run (or after a reset).
    let compare = matches!(pass, Pass::Run { full_resync: false })
        && crate::elevation::as_extension_owner(|| {
            Spi::get_one_with_args::<bool>("SELECT EXISTS (SELECT FROM vitally.delivery_state WHERE sync_id = $1)", &[sync.id.into()])
                .unwrap_or_else(|e| crate::catalog::internal(e))
                .unwrap_or(false)
        });
    let statements = if compare {
        // Rows that changed since their delivery (or have no key), then repeated keys
        // among those only: a row identical to what was delivered sends nothing whether
        // its key repeats or not, and counting every key of a large query cost more
        // than the comparison itself. A repeated key's unchanged rows become invalid
        // records too, with the changed ones.
        let changed = match prepared.behavior {
            Behavior::Append => "d.sync_key IS NULL",
            _ => "d.payload_hash IS DISTINCT FROM s.hash",
        };
        let source = format!(
            "SELECT c.*, coalesce(x.n, 1) AS dups FROM {CHANGED} c LEFT JOIN {DUPS} x ON x.sync_key = c.sync_key
             UNION ALL
             SELECT s.*, x.n FROM {STAGE} s JOIN {DUPS} x ON x.sync_key = s.sync_key
              WHERE NOT EXISTS (SELECT FROM {CHANGED} c WHERE c.sync_key = s.sync_key AND c.hash = s.hash)"
        );
        format!(
            "CREATE TEMP TABLE vitally_changed ON COMMIT DROP AS
                 SELECT s.* FROM {STAGE} s
                   LEFT JOIN vitally.delivery_state d ON d.sync_id = {id} AND d.sync_key = s.sync_key
                  WHERE s.sync_key IS NULL OR {changed};
             ANALYZE {CHANGED};
             CREATE TEMP TABLE vitally_dups ON COMMIT DROP AS
                 SELECT s.sync_key, pg_catalog.count(*) AS n FROM {STAGE} s
                  WHERE s.sync_key IN (SELECT c.sync_key FROM {CHANGED} c)
                  GROUP BY s.sync_key HAVING pg_catalog.count(*) > 1;
             CREATE TEMP TABLE vitally_records ON COMMIT DROP AS {records};",
            id = sync.id,
            records = prepared.plan.records_sql(&source, &prepared.options)
        )
    } else {
        // Every row (a first run, full_resync, preview): repeated keys counted over all.
        let source = format!("SELECT s.*, coalesce(x.n, 1) AS dups FROM {STAGE} s LEFT JOIN {DUPS} x ON x.sync_key = s.sync_key");
        format!(
            "CREATE TEMP TABLE vitally_dups ON COMMIT DROP AS
                 SELECT sync_key, pg_catalog.count(*) AS n FROM {STAGE}
                  WHERE sync_key IS NOT NULL GROUP BY sync_key HAVING pg_catalog.count(*) > 1;
             CREATE TEMP TABLE vitally_records ON COMMIT DROP AS {records};",
            records = prepared.plan.records_sql(&source, &prepared.options)
        )
    };
    crate::elevation::as_extension_owner(|| {
        with_settings(PLANNING_SETTINGS, || Spi::run(&format!("ANALYZE {STAGE}; {statements} ANALYZE {RECORDS};")))
            .unwrap_or_else(|e| crate::catalog::internal(e));
    });
    progress.phase(|| {
        let count = || Spi::get_one::<i64>(&format!("SELECT pg_catalog.count(*) FROM {RECORDS}")).ok().flatten().unwrap_or(0);
        let n = crate::elevation::as_extension_owner(count);
        format!("compared with what was delivered: {n} rows new, changed or invalid")
    });
    rows
}

/// The temporary tables of a planning pass: the query's rows, those that changed, the
/// repeated keys, the records.
pub const CHANGED: &str = "pg_temp.vitally_changed";
pub const DUPS: &str = "pg_temp.vitally_dups";
pub const RECORDS: &str = "pg_temp.vitally_records";

pub fn drop_stage() {
    crate::elevation::as_extension_owner(|| {
        for table in [STAGE, CHANGED, DUPS, RECORDS] {
            // Looked up first: DROP ... IF EXISTS would tell the user about it in a NOTICE.
            let exists = Spi::get_one::<bool>(&format!("SELECT pg_catalog.to_regclass('{table}') IS NOT NULL")).ok().flatten().unwrap_or(false);
            if exists {
                Spi::run(&format!("DROP TABLE {table}")).unwrap_or_else(|e| crate::catalog::internal(e));
            }
        }
    });
}
