//! The comparison with what was delivered, inside the query's own pass: Postgres calls
//! `admit` once per row of the sync's query, and only the rows it lets through are made
//! into JSON and written (the logic: `vitally_planner::compare`).
//!
//! The sync's query runs as its owner, who need not be able to use schema `vitally`,
//! so the pass calls `admit` as `pg_temp.vitally_admit`, a function the extension's
//! owner creates for the pass and drops after it. What it consults lives in this
//! backend's memory for the pass only (about 70 bytes a key) and is dropped when the
//! pass ends or its transaction does.
//!
//! A full run also keeps the order it read its keys in (`vitally.read_order`, 8 bytes
//! a key hash), for the next run to lay out what was delivered in that order: see
//! `vitally_planner::compare`. Only a hint; nothing a user wrote reads or writes it.

use crate::elevation::{as_extension_owner, with_settings};
use crate::errors::Result;
use pgrx::prelude::*;
use std::cell::RefCell;
use vitally_planner::compare::{Against, Comparison};

thread_local! {
    static CURRENT: RefCell<Option<Comparison>> = const { RefCell::new(None) };
}

/// The function the pass calls, as `pg_temp.vitally_admit(seed, key, values...)`.
pub const ADMIT: &str = "pg_temp.vitally_admit";

/// What `vitally_admit` keeps between calls of one statement (in `fn_extra`): the hash
/// function of each argument's type.
#[repr(C)]
struct Hashers {
    procs: [pg_sys::FmgrInfo; pg_sys::FUNC_MAX_ARGS as usize],
}

/// A call of a two-argument function, laid out as Postgres's `LOCAL_FCINFO(fcinfo, 2)`.
#[repr(C)]
struct Call2 {
    base: pg_sys::FunctionCallInfoBaseData,
    args: [pg_sys::NullableDatum; 2],
}
const _: () = assert!(std::mem::offset_of!(pg_sys::FunctionCallInfoBaseData, args) == std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>());

/// What a NULL value adds to a row's hash.
const NULL_HASH: u64 = 0x5bd1_e995_9e37_79b9;

#[no_mangle]
pub extern "C" fn pg_finfo_vitally_admit() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `vitally_admit(seed int8, key text, VARIADIC "any") RETURNS int8`, called once per
/// row of the query: the row's hash (of the key and the values, each by its type's own
/// extended hash function, combined as `hash_record_extended` does, without building
/// a row value first: that took most of an unchanged re-run), or NULL when the row is
/// not to be written (unchanged; in the second pass, not of a repeated key).
///
/// No guard: the per-row path calls no Postgres function that we wrap, only the types'
/// hash functions, straight through their pointers (an error in one of those, a
/// user's type's, unwinds past frames that hold nothing to drop).
///
/// # Safety
/// Called by Postgres's fmgr, as declared in `begin` (the first argument an int8).
#[no_mangle]
pub unsafe extern "C-unwind" fn vitally_admit(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // Called by hand (the query may call it) with too few arguments: nothing to hash.
    // A panic here would unwind into Postgres, so every shape is answered.
    if (*fcinfo).nargs < 2 || (*fcinfo).args.as_slice(1)[0].isnull {
        (*fcinfo).isnull = true;
        return pg_sys::Datum::from(0);
    }
    let flinfo = (*fcinfo).flinfo;
    if (*flinfo).fn_extra.is_null() {
        (*flinfo).fn_extra = hashers(flinfo, (*fcinfo).nargs as usize).cast();
    }
    let hashers = &mut *((*flinfo).fn_extra as *mut Hashers);
    let args = (*fcinfo).args.as_slice((*fcinfo).nargs as usize);
    let seed = args[0].value.value() as u64;
    let mut hash: u64 = 0;
    for (i, arg) in args.iter().enumerate().skip(1) {
        let element = if arg.isnull { NULL_HASH } else { call(&mut hashers.procs[i], arg.value, seed) };
        hash = (hash << 5).wrapping_sub(hash).wrapping_add(element);
    }
    let key = if args[1].isnull { None } else { Some(call(&mut hashers.procs[1], args[1].value, 0) as i64) };
    let admitted = CURRENT.with_borrow_mut(|current| match current {
        Some(c) => c.admit(key, hash as i64),
        None => true,
    });
    if admitted {
        pg_sys::Datum::from(hash as i64)
    } else {
        (*fcinfo).isnull = true;
        pg_sys::Datum::from(0)
    }
}

/// A type's extended hash function called on a value, in the default collation: a
/// change of case is a change, whatever collation the column has.
unsafe fn call(proc: &mut pg_sys::FmgrInfo, value: pg_sys::Datum, seed: u64) -> u64 {
    let mut c: Call2 = std::mem::zeroed();
    c.base.flinfo = proc;
    c.base.fncollation = pg_sys::DEFAULT_COLLATION_OID;
    c.base.nargs = 2;
    c.args[0] = pg_sys::NullableDatum { value, isnull: false };
    c.args[1] = pg_sys::NullableDatum { value: pg_sys::Datum::from(seed as i64), isnull: false };
    let f = proc.fn_addr.expect("a hash function");
    let result = f(&mut c.base);
    if c.base.isnull {
        NULL_HASH
    } else {
        result.value() as u64
    }
}

/// The hash functions of the arguments' types, looked up once per statement.
#[pg_guard]
unsafe extern "C-unwind" fn hashers(flinfo: *mut pg_sys::FmgrInfo, nargs: usize) -> *mut Hashers {
    let hashers = pg_sys::MemoryContextAllocZero((*flinfo).fn_mcxt, std::mem::size_of::<Hashers>()) as *mut Hashers;
    for i in 1..nargs {
        let ty = pg_sys::get_fn_expr_argtype(flinfo, i as i32);
        let entry = pg_sys::lookup_type_cache(ty, pg_sys::TYPECACHE_HASH_EXTENDED_PROC as i32);
        if entry.is_null() || (*entry).hash_extended_proc == pg_sys::InvalidOid {
            error!("vitally_admit: type {} has no extended hash function", ty.to_u32());
        }
        pg_sys::fmgr_info_cxt((*entry).hash_extended_proc, &mut (*hashers).procs[i], (*flinfo).fn_mcxt);
    }
    hashers
}

/// Starts a pass of sync `sync_id`: reads what was delivered for it (unless `against`
/// is `Nothing`) and creates the function the pass calls. `every_row`: a run of every
/// row, whose order `keep_order` may keep.
pub fn begin(sync_id: i64, against: Against, keys: Option<&[String]>, every_row: bool) -> Result<()> {
    let mut comparison = Comparison::new(against);
    if every_row {
        comparison.keeps_order();
    }
    if against != Against::Nothing {
        load(sync_id, keys, &mut comparison)?;
        if every_row {
            comparison.expect(read_order(sync_id)?);
        }
        comparison.loaded(&mut || {
            pgrx::check_for_interrupts!();
        });
    }
    CURRENT.with_borrow_mut(|current| *current = Some(comparison));
    // Dropped with the transaction if the pass fails (the function too: it is created in it).
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, end);
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, end);
    as_extension_owner(|| {
        // One left by the caller (a function of the same name, made before calling us)
        // is dropped, so that the pass only ever calls ours.
        drop_function()?;
        Spi::run(
            "CREATE FUNCTION pg_temp.vitally_admit(pg_catalog.int8, VARIADIC \"any\") RETURNS pg_catalog.int8
                 LANGUAGE c VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT AS '$libdir/vitally_sync', 'vitally_admit'",
        )?;
        Ok(())
    })
}

/// Drops every function named `vitally_admit` in this session's temporary schema: ours
/// left by the pass, or any the caller made (another overload would be chosen over ours
/// for arguments it matches better).
fn drop_function() -> Result<()> {
    let found = Spi::get_one::<Vec<String>>(
        "SELECT pg_catalog.array_agg(p.oid::pg_catalog.regprocedure::pg_catalog.text) FROM pg_catalog.pg_proc p
          WHERE p.proname = 'vitally_admit' AND p.pronamespace = pg_catalog.pg_my_temp_schema()",
    )?;
    for function in found.unwrap_or_default() {
        Spi::run(&format!("DROP FUNCTION {function}"))?;
    }
    Ok(())
}

/// What was delivered for the sync (of `keys` only, when given), as (key hash, values
/// hash).
fn load(sync_id: i64, keys: Option<&[String]>, comparison: &mut Comparison) -> Result<()> {
    as_extension_owner(|| match keys {
        None if unsafe { scan(sync_id, expected_keys(sync_id)?, comparison)? } => Ok(()),
        _ => load_by_sql(sync_id, keys, comparison),
    })
}

/// About how many keys the sync has delivered: the most rows one of its last few
/// planned full runs read (0 before its first; the run being planned, retries of failed
/// records and live runs do not count). Only a guess, for choosing how to read its state.
fn expected_keys(sync_id: i64) -> Result<i64> {
    Ok(Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.max(rows_read) FROM (SELECT rows_read FROM vitally.sync_run
           WHERE sync_id = $1 AND NOT live AND rows_read > 0 ORDER BY id DESC LIMIT 3) r",
        &[sync_id.into()],
    )?
    .unwrap_or(0))
}

/// How many rows of the state a page holds, about (a key of a few bytes, no accounts).
const STATE_ROWS_PER_PAGE: i64 = 100;

/// Every key of the sync, read straight from `vitally.delivery_state`: a SQL cursor
/// spent half a second per million keys in the executor and in copying tuples for SPI,
/// five times the scan itself. A sync expected to hold less than an eighth of the
/// table is read through the primary key's index (a hundred keys beside a million
/// other syncs' read a few pages, not the whole heap); a larger one by a sequential
/// scan of the heap (a random heap fetch per key costs more than reading every page).
/// The key is hashed by `hashtextextended`, as `vitally_admit` hashes it. Returns
/// false, having read nothing, if the table is not laid out as bootstrap.sql makes it
/// (then SQL reads it).
unsafe fn scan(sync_id: i64, expected: i64, comparison: &mut Comparison) -> Result<bool> {
    let schema = pg_sys::get_namespace_oid(c"vitally".as_ptr(), false);
    let relid = pg_sys::get_relname_relid(c"delivery_state".as_ptr(), schema);
    if relid == pg_sys::InvalidOid {
        return Ok(false);
    }
    // What SPI would see: this transaction's earlier writes (made visible before the
    // table is opened, so that its descriptor is current).
    pg_sys::CommandCounterIncrement();
    let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
    let desc = (*rel).rd_att;
    let laid_out = (*(*rel).rd_rel).relkind == pg_sys::RELKIND_RELATION as std::ffi::c_char
        && (*desc).natts >= 3
        && [pg_sys::INT8OID, pg_sys::TEXTOID, pg_sys::INT8OID].iter().enumerate().all(|(i, &t)| {
            let att = &*(*desc).attrs.as_ptr().add(i);
            att.atttypid == t && !att.attisdropped && att.attnotnull
        });
    if !laid_out {
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        return Ok(false);
    }
    let pages = pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM) as i64;
    let index = pg_sys::RelationGetPrimaryKeyIndex(rel);
    let by_index = expected.saturating_mul(8) < pages.saturating_mul(STATE_ROWS_PER_PAGE) && index != pg_sys::InvalidOid && {
        // Its first column must be sync_id, as bootstrap.sql makes it; and not an index
        // the planner would not use yet (made over broken HOT chains).
        let i = pg_sys::index_open(index, pg_sys::AccessShareLock as i32);
        let usable = *(*(*i).rd_index).indkey.values.as_ptr() == 1 && !(*(*i).rd_index).indcheckxmin;
        pg_sys::index_close(i, pg_sys::NoLock as i32);
        usable
    };
    let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot());
    let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
    pg_sys::ScanKeyInit(&mut key, 1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::Oid::from(pg_sys::F_INT8EQ), pg_sys::Datum::from(sync_id));
    // Either way a scan of the heap's rows with sync_id = $1 (the key's column number is
    // the table's; for the index, systable_beginscan maps it to the index's).
    let scan = pg_sys::systable_beginscan(rel, index, by_index, snapshot, 1, &mut key);
    let mut hasher: pg_sys::FmgrInfo = std::mem::zeroed();
    pg_sys::fmgr_info(pg_sys::Oid::from(pg_sys::F_HASHTEXTEXTENDED), &mut hasher);
    let natts = (*desc).natts as usize;
    let mut values = vec![pg_sys::Datum::from(0usize); natts];
    let mut nulls = vec![false; natts];
    for n in 0u64.. {
        // Cancellable, as a query's scan is (an abort releases the scan and the table).
        if n % 65_536 == 0 {
            pgrx::check_for_interrupts!();
        }
        let tuple = pg_sys::systable_getnext(scan);
        if tuple.is_null() {
            break;
        }
        pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        // The index is not rechecked against the row it leads to: a row of another sync
        // is skipped, whichever way it came.
        if values[0].value() as i64 != sync_id {
            continue;
        }
        // Detoasted first by a guarded call (a no-op for a key stored inline), so that
        // the hash function, called by pointer, has nothing left to fail on.
        let key = pg_sys::pg_detoast_datum_packed(values[1].cast_mut_ptr());
        comparison.delivered(call(&mut hasher, pg_sys::Datum::from(key), 0) as i64, values[2].value() as i64);
        if key != values[1].cast_mut_ptr() {
            pg_sys::pfree(key.cast());
        }
    }
    pg_sys::systable_endscan(scan);
    pg_sys::UnregisterSnapshot(snapshot);
    pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
    Ok(true)
}

/// What was delivered, read by SQL: for a live re-plan's few keys (by the table's
/// index), or if the table is not as `scan` expects.
fn load_by_sql(sync_id: i64, keys: Option<&[String]>, comparison: &mut Comparison) -> Result<()> {
    // Planned for all its rows, not the first tenth (a cursor's default): read without
    // keys (a table `scan` cannot read), a sync's rows are most of the table more often
    // than not, and then a sequential scan is cheaper.
    with_settings(&[(c"cursor_tuple_fraction", c"1")], || {
        Spi::connect(|client| {
            const STATE: &str = "SELECT pg_catalog.hashtextextended(sync_key, 0), payload_hash FROM vitally.delivery_state WHERE sync_id = $1";
            let mut cursor = match keys {
                None => client.try_open_cursor(STATE, &[sync_id.into()])?,
                Some(keys) => client.try_open_cursor(&format!("{STATE} AND sync_key = ANY ($2)"), &[sync_id.into(), keys.to_vec().into()])?,
            };
            loop {
                let batch = cursor.fetch(10_000)?;
                if batch.is_empty() {
                    return Ok(());
                }
                // Read straight from each tuple: two int8 columns, never NULL (both come
                // from NOT NULL columns), so at the start of its data, 8-byte aligned.
                unsafe {
                    let table = pg_sys::SPI_tuptable;
                    for i in 0..batch.len() {
                        let header = (*(*(*table).vals.add(i))).t_data;
                        let data = (header as *const u8).add((*header).t_hoff as usize) as *const i64;
                        comparison.delivered(*data, *data.add(1));
                    }
                }
            }
        })
    })
}

/// Ends the first pass: the hashes of keys that repeated (the second pass, if any,
/// admits every row of those), and how many rows the query gave.
pub fn repeats() -> (Vec<i64>, i64) {
    CURRENT.with_borrow_mut(|current| match current {
        Some(c) => (c.repeats().to_vec(), c.rows()),
        None => (Vec::new(), 0),
    })
}

/// The keys the sync's last full pass read, in its order (none kept: empty).
fn read_order(sync_id: i64) -> Result<Vec<i64>> {
    let bytes = as_extension_owner(|| {
        Ok(Spi::get_one_with_args::<Vec<u8>>("SELECT (SELECT keys FROM vitally.read_order WHERE sync_id = $1)", &[sync_id.into()])?)
    })?;
    Ok(bytes.unwrap_or_default().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect())
}

/// After `repeats` of a full pass: the order its keys came in, kept for the next pass
/// when it differs from the one kept (see `vitally_planner::compare`).
pub fn keep_order(sync_id: i64) -> Result<()> {
    let Some(keys) = CURRENT.with_borrow_mut(|current| current.as_mut().and_then(|c| c.order_to_keep())) else {
        return Ok(());
    };
    let bytes: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
    as_extension_owner(|| {
        Spi::run_with_args(
            "INSERT INTO vitally.read_order (sync_id, keys) VALUES ($1, $2) ON CONFLICT (sync_id) DO UPDATE SET keys = EXCLUDED.keys",
            &[sync_id.into(), bytes.into()],
        )?;
        Ok(())
    })
}

/// Ends the pass: the function and what it consulted are gone.
pub fn finish() -> Result<()> {
    end();
    as_extension_owner(drop_function)
}

fn end() {
    CURRENT.with_borrow_mut(|current| *current = None);
}
