//! The worker's per-round statements, parsed once and kept (`SPI_keepplan`) instead of
//! parsed, analyzed and planned on every claim of every sync and every outcome: that was
//! a quarter of the worker's CPU while delivering.
//!
//! Postgres's plan cache plans the first executions with their values, and may then keep
//! a generic plan, made for the table as it was. So the worker forgets them when its claims
//! start over: on a commit that queued records (at most once a second), every 30 s, and
//! for a new extension. A plan made when the queue was small is kept at most 30 s once a
//! large run is queued (a commit that rings no doorbell, as COMMIT PREPARED), usually not
//! past that run's commit. DDL on the tables and the statistics autovacuum writes
//! invalidate them too.

use pgrx::datum::DatumWithOid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult, SpiTupleTable};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::hash_map::{Entry, HashMap};

thread_local! {
    /// By statement text (the constants of `statements.rs`) and whether it writes. Only the
    /// worker's thread runs SPI.
    static KEPT: RefCell<HashMap<(&'static str, bool), OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

/// Runs `sql` (one of the fixed statements) with `args`, from its kept plan, preparing it
/// first if need be. `mutating`: it writes.
pub fn run<'conn>(client: &SpiClient<'conn>, sql: &'static str, mutating: bool, args: &[DatumWithOid]) -> SpiResult<SpiTupleTable<'conn>> {
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        let key = (sql, mutating);
        if let Entry::Vacant(slot) = kept.entry(key) {
            let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
            let statement = if mutating { client.prepare_mut(sql, &types)? } else { client.prepare(sql, &types)? };
            slot.insert(statement.keep());
        }
        if mutating {
            // As `SpiClient::update` does: from here on the transaction's statements see its writes.
            unsafe { pgrx::pg_sys::GetCurrentTransactionId() };
        }
        client.select(&kept[&key], None, args)
    })
}

/// Forgets every kept plan: the next execution of each plans it again.
pub fn forget() {
    KEPT.with(|kept| kept.borrow_mut().clear());
}
