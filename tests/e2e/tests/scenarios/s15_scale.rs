//! What keeps delivery as fast with a large queue as with a small one, pinned in rows
//! and statistics rather than seconds (the speeds themselves are in `make bench`).

use crate::{cluster, APP_DB};
use std::time::Duration;
use vitally_e2e::{emulator, emulator_destination, eventually, scalar, sync_and_wait, Faults};

crate::trials!("15_scale":
    the_workers_writes_reach_the_table_statistics,
);

/// Updates of the queue by the worker must count in pg_stat_user_tables, or autovacuum
/// never cleans up after delivered records (the worker once reported nothing: n_tup_upd
/// stayed 0 after 320,000 outcomes).
fn the_workers_writes_reach_the_table_statistics() {
    let vitally = emulator(Faults::default());
    let mut db = cluster().admin(APP_DB);
    emulator_destination(&mut db, "sc_stats", &vitally);
    db.batch_execute(
        "CREATE TABLE sc_stats AS SELECT 'sc_' || g AS id, g AS seats FROM generate_series(1, 300) g;
         SELECT vitally.create_sync('sc_stats', 'sc_stats', 'account', 'upsert', 'SELECT * FROM sc_stats', 'id');",
    )
    .unwrap();
    let updated =
        |db: &mut vitally_e2e::Client| -> i64 { scalar(db, "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'vitally.record'::regclass") };
    let before = updated(&mut db);
    assert_eq!(sync_and_wait(&mut db, "sc_stats", 60), "succeeded");
    // Each record is updated twice by the worker: its lease, then its outcome. Other
    // tests only add to the count.
    let after = eventually("the worker's updates in pg_stat_user_tables", Duration::from_secs(10), || {
        let n = updated(&mut db);
        (n - before >= 600).then_some(n)
    });
    assert!(after - before >= 600, "{before} -> {after}");
}
