//! What keeps delivery as fast with a large queue as with a small one, pinned in rows
//! and statistics rather than seconds (the speeds themselves are in `make bench`).

use crate::{cluster, APP_DB};
use std::time::Duration;
use vitally_e2e::queue_statements::{CLAIM, FINISH_RUNS, RECORD_OUTCOMES, RECORD_OUTCOMES_SETTINGS};
use vitally_e2e::{
    deliver_by_hand, destination, emulator, emulator_destination, eventually, fresh_database, scalar, sync_and_wait, Client, Cluster, Faults,
};

crate::trials!("15_scale":
    the_workers_writes_reach_the_table_statistics,
    claims_and_finished_runs_read_pages_by_what_they_take_not_by_what_was_delivered,
    an_outcome_finds_its_records_by_id_whatever_the_statistics_say,
    a_jobs_outcomes_find_their_records_by_id_in_a_large_queue,
    the_worker_plans_its_claims_and_outcomes_once_and_fills_each_job,
    a_run_whose_records_a_newer_run_took_over_is_finished,
    a_change_queued_by_a_transaction_older_than_the_last_claim_is_delivered_at_once,
    a_re_run_writes_only_the_rows_that_changed_and_reads_each_page_once,
    a_first_run_fills_the_index_of_pending_keys_in_order,
    keys_compare_as_bytes_in_the_queue_and_still_join_the_users_text,
    message_ids_are_counted_from_one_random_draw_per_backend_and_never_repeat,
    a_run_compares_with_its_own_syncs_delivery_state_as_of_its_snapshot,
    a_small_sync_beside_a_large_one_reads_only_its_own_delivery_state,
    a_change_replacing_a_pending_one_reads_the_delivery_state_once,
    pending_records_are_found_by_key_not_by_walking_what_was_delivered,
    a_run_keeps_the_order_it_read_its_keys_in_and_writes_it_only_when_it_moved,
);

/// A change's messageId is counted from a random prefix drawn once per backend, not read
/// from the kernel's random source per record (1.3 s of a million-record first run): a
/// run's ids share that prefix and are distinct; another session's are another draw;
/// each is a version-4 UUID; no role but the extension's owner may mint one.
fn message_ids_are_counted_from_one_random_draw_per_backend_and_never_repeat() {
    let mut db = fresh_database(cluster(), "scale_message_ids");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE t AS SELECT g AS id, g % 7 AS v FROM generate_series(1, 2000) g;
         CREATE TABLE u AS SELECT g AS id FROM generate_series(1, 2000) g;
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM t');
         SELECT vitally.create_sync('u', 'd', 'account', 'upsert', 'SELECT * FROM u');
         SELECT vitally.sync('s');",
    )
    .unwrap();
    let mut other = cluster().connect("scale_message_ids", "postgres");
    other.batch_execute("SELECT vitally.sync('u')").unwrap();
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT message_id),
                    count(DISTINCT left(message_id::text, 18)) FILTER (WHERE s.name = 's'),
                    count(DISTINCT left(message_id::text, 18)),
                    bool_and(substr(message_id::text, 15, 1) = '4' AND substr(message_id::text, 20, 1) IN ('8', '9', 'a', 'b'))
               FROM vitally.record r JOIN vitally.sync s ON s.id = r.sync_id",
            &[],
        )
        .unwrap();
    let (records, distinct, prefixes_s, prefixes): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((records, distinct), (4000, 4000), "every record has an id of its own");
    assert_eq!(prefixes_s, 1, "one backend's ids share one draw");
    assert_eq!(prefixes, 2, "two backends drew two prefixes");
    assert!(row.get::<_, bool>(4), "every id is shaped as a version-4 UUID");
    // Asked of the catalog: a role made here would reset every session's caches
    // while this group's page counts are measured.
    let (user, public): (bool, bool) = {
        let r = db
            .query_one(
                "SELECT has_function_privilege('vitally_user', 'vitally.new_message_id()', 'EXECUTE'),
                        coalesce((SELECT bool_or(a.grantee = 0) FROM pg_proc p, aclexplode(p.proacl) a WHERE p.oid = 'vitally.new_message_id()'::regprocedure), true)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((user, public), (false, false), "only the extension's owner may mint a messageId");
}

/// The delivery state is read straight from its heap (a SQL cursor cost five times the
/// scan): only the sync's own keys count, and a run sees the state its snapshot sees,
/// as a query would: not the rows reset() deleted, and the writes of its own transaction.
fn a_run_compares_with_its_own_syncs_delivery_state_as_of_its_snapshot() {
    let mut db = fresh_database(cluster(), "scale_state_scan");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE t AS SELECT g AS id, g % 7 AS v FROM generate_series(1, 3000) g;
         SELECT vitally.create_sync('a', 'd', 'account', 'upsert', 'SELECT * FROM t');
         SELECT vitally.create_sync('b', 'd', 'account', 'upsert', 'SELECT * FROM t');
         SELECT vitally.sync('a');",
    )
    .unwrap();
    deliver_by_hand(&mut db, "a");
    let queued = |db: &mut Client| -> i64 { scalar(db, "SELECT records_queued FROM vitally.sync_runs ORDER BY id DESC LIMIT 1") };
    db.batch_execute("SELECT vitally.sync('b')").unwrap();
    assert_eq!(queued(&mut db), 3000, "sync b sends every row: what a delivered is not b's");
    deliver_by_hand(&mut db, "b");
    db.batch_execute("UPDATE t SET v = v + 1 WHERE id <= 10; SELECT vitally.sync('a')").unwrap();
    assert_eq!(queued(&mut db), 10, "sync a sends the rows that changed");
    // Rows a committed reset() deleted, not vacuumed away yet, are not what was delivered.
    db.batch_execute("ALTER TABLE vitally.delivery_state SET (autovacuum_enabled = false)").unwrap();
    db.batch_execute("SELECT vitally.reset('b')").unwrap();
    db.batch_execute("SELECT vitally.sync('b')").unwrap();
    assert_eq!(queued(&mut db), 3000, "after reset('b'), b sends every row again");
    // Delivered and planned in one transaction: the run sees its transaction's writes.
    db.batch_execute("BEGIN; UPDATE t SET v = v + 1 WHERE id <= 5; SELECT vitally.sync('a')").unwrap();
    deliver_by_hand(&mut db, "a");
    db.batch_execute("SELECT vitally.sync('a')").unwrap();
    let run: (i64, String) = {
        let r = db.query_one("SELECT records_queued, status FROM vitally.sync_runs ORDER BY id DESC LIMIT 1", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    db.batch_execute("COMMIT").unwrap();
    assert_eq!(run, (0, "succeeded".to_string()), "what this transaction delivered counts in its next run");
}

/// Heap pages of `table` a statement fetched (hits included), run inside the caller's
/// transaction: the counts are the transaction's own until it ends.
fn fetched(db: &mut Client, table: &str, sql: &str) -> i64 {
    let count = format!("SELECT pg_stat_get_xact_blocks_fetched('{table}'::regclass)");
    let before: i64 = scalar(db, &count);
    db.batch_execute(sql).unwrap();
    let after: i64 = scalar(db, &count);
    after - before
}

/// A sync with few keys beside one with many reads its delivery state through the
/// table's index, not the whole heap (which a full run of the large sync reads): its
/// run costs what it has, not what every sync has. It still sees exactly its keys.
fn a_small_sync_beside_a_large_one_reads_only_its_own_delivery_state() {
    let mut db = fresh_database(cluster(), "scale_small_beside_large");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE big AS SELECT g AS id, g % 7 AS v FROM generate_series(1, 30000) g;
         CREATE TABLE small AS SELECT g AS id, g % 7 AS v FROM generate_series(1, 50) g;
         SELECT vitally.create_sync('big', 'd', 'account', 'upsert', 'SELECT * FROM big');
         SELECT vitally.create_sync('small', 'd', 'account', 'upsert', 'SELECT * FROM small');
         SELECT vitally.sync('big');",
    )
    .unwrap();
    deliver_by_hand(&mut db, "big");
    db.batch_execute("SELECT vitally.sync('small')").unwrap();
    deliver_by_hand(&mut db, "small");
    db.batch_execute("VACUUM ANALYZE vitally.delivery_state").unwrap();
    let state: i64 = scalar(&mut db, "SELECT relpages::int8 FROM pg_class WHERE oid = 'vitally.delivery_state'::regclass");
    // Heap pages of the state fetched by one statement, and what its run queued.
    let run = |db: &mut Client, sql: &str| -> (i64, i64) {
        db.batch_execute("BEGIN").unwrap();
        let pages = fetched(db, "vitally.delivery_state", sql);
        let queued: i64 = scalar(db, "SELECT records_queued FROM vitally.sync_runs ORDER BY id DESC LIMIT 1");
        db.batch_execute("COMMIT").unwrap();
        (pages, queued)
    };
    assert!(state > 100, "the state has {state} pages: the test no longer measures");
    let (fetched, queued) = run(&mut db, "SELECT vitally.sync('small')");
    assert_eq!(queued, 0, "the small sync's rows are unchanged");
    assert!(fetched * 10 < state, "the small sync's run fetched {fetched} of the state's {state} pages");
    let (_, queued) = run(&mut db, "UPDATE small SET v = v + 1 WHERE id <= 3; SELECT vitally.sync('small')");
    assert_eq!(queued, 3, "the small sync sends its changed rows, and only those");
    deliver_by_hand(&mut db, "small");
    // Read through the index, rows a committed reset() deleted (not vacuumed) do not count.
    db.batch_execute("ALTER TABLE vitally.delivery_state SET (autovacuum_enabled = false)").unwrap();
    db.batch_execute("SELECT vitally.reset('small')").unwrap();
    let (fetched, queued) = run(&mut db, "SELECT vitally.sync('small')");
    assert_eq!(queued, 50, "after reset('small'), the small sync sends every row again");
    assert!(fetched * 10 < state, "the small sync's run after reset() fetched {fetched} of the state's {state} pages");
    // The large sync still compares with all of its keys, read by one pass over the heap
    // (an index walk in key order would fetch pages again as it goes back and forth).
    let now: i64 = scalar(&mut db, "SELECT (pg_relation_size('vitally.delivery_state') / 8192)::int8");
    let (fetched, queued) = run(&mut db, "UPDATE big SET v = v + 1 WHERE id <= 4; SELECT vitally.sync('big')");
    assert_eq!(queued, 4, "the large sync sends its changed rows, and only those");
    assert!((now..=now + 5).contains(&fetched), "the large sync's run fetched {fetched} pages of the state's {now}: not one pass over its heap");
}

/// A run that replaces pending records reads the delivery state once, to compare: the
/// statement that replaces them joined it too (for the accounts a user left, which only
/// unlink_removed_accounts needs), and the planner kept that join in an UPDATE, a
/// sequential scan of every sync's state.
fn a_change_replacing_a_pending_one_reads_the_delivery_state_once() {
    let mut db = fresh_database(cluster(), "scale_replace_pending");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE t AS SELECT g AS id, g % 7 AS v FROM generate_series(1, 30000) g;
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM t');
         SELECT vitally.sync('s');",
    )
    .unwrap();
    deliver_by_hand(&mut db, "s");
    db.batch_execute("VACUUM ANALYZE vitally.delivery_state, vitally.record").unwrap();
    db.batch_execute("UPDATE t SET v = v + 1 WHERE id % 100 = 0; SELECT vitally.sync('s')").unwrap();
    let state: i64 = scalar(&mut db, "SELECT relpages::int8 FROM pg_class WHERE oid = 'vitally.delivery_state'::regclass");
    assert!(state > 100, "the state has {state} pages: the test no longer measures");
    db.batch_execute("BEGIN; UPDATE t SET v = v + 1 WHERE id % 50 = 0").unwrap();
    let fetched = fetched(&mut db, "vitally.delivery_state", "SELECT vitally.sync('s')");
    let (queued, pending): (i64, i64) = {
        let r = db
            .query_one(
                "SELECT (SELECT records_queued FROM vitally.sync_runs ORDER BY id DESC LIMIT 1),
                        (SELECT pg_catalog.count(*) FROM vitally.record WHERE status = 'pending')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    db.batch_execute("COMMIT").unwrap();
    assert_eq!((queued, pending), (600, 600), "300 pending records replaced, 300 more queued");
    assert!(fetched < state * 3 / 2, "the run fetched {fetched} pages of the state's {state}: it read the state more than once");
}

/// A database of its own where sync `s` of table `t` (`rows` rows) has been run once and
/// its records delivered by hand; autovacuum kept off the queue, so that what the records
/// left stays there.
fn delivered_sync(database: &str, rows: i64) -> Client {
    let mut db = fresh_database(cluster(), database);
    destination(&mut db, "d");
    db.batch_execute(&format!(
        "ALTER TABLE vitally.record SET (autovacuum_enabled = false);
         CREATE TABLE t AS SELECT g AS id, g % 7 AS v FROM generate_series(1, {rows}) g;
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM t');
         SELECT vitally.sync('s');"
    ))
    .unwrap();
    deliver_by_hand(&mut db, "s");
    db
}

/// A run that finds pending records looks each changed key up in the index of pending
/// keys: walking all of the sync's entries there also walked those of every record
/// delivered since the last vacuum, and every heap page they point to (after a large
/// run, a million entries: 0.25 s per statement).
fn pending_records_are_found_by_key_not_by_walking_what_was_delivered() {
    let mut db = delivered_sync("scale_pending_by_key", 30000);
    db.batch_execute("UPDATE t SET v = v + 1 WHERE id % 1000 = 0; SELECT vitally.sync('s')").unwrap();
    let heap: i64 = scalar(&mut db, "SELECT (pg_relation_size('vitally.record') / 8192)::int8");
    db.batch_execute("BEGIN; UPDATE t SET v = v + 1 WHERE id % 500 = 0").unwrap();
    let fetched = fetched(&mut db, "vitally.record", "SELECT vitally.sync('s')");
    let queued: i64 = scalar(&mut db, "SELECT records_queued FROM vitally.sync_runs ORDER BY id DESC LIMIT 1");
    let pending: Vec<(String, i32)> = db
        .query("SELECT sync_key, version FROM vitally.record WHERE status = 'pending' ORDER BY sync_key::int", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    db.batch_execute("COMMIT").unwrap();
    let earlier: (i64, String) = {
        let r = db.query_one("SELECT records_pending, status FROM vitally.sync_run ORDER BY id DESC LIMIT 1 OFFSET 1", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(queued, 60, "30 pending records replaced, 30 more queued");
    assert_eq!(earlier, (0, "succeeded".to_string()), "the run whose records were all replaced is over");
    let expected: Vec<(String, i32)> = (1..=60).map(|i| ((i * 500).to_string(), if i % 2 == 0 { 2 } else { 1 })).collect();
    assert_eq!(pending, expected, "one pending record per changed key; the replaced ones in their second version");
    assert!(heap > 500, "the queue has {heap} pages: the test no longer measures");
    // 309 here, against 1,154 before.
    assert!(fetched * 2 < heap, "the run fetched {fetched} buffers of the queue's {heap} pages for 60 changed keys");
}

/// A first run queues its records in key order, so the unique index of pending keys
/// grows at its right edge: its leaf pages end up full (90%, a right-edge split's fill)
/// instead of split all over (about 70%, and 2 s more for a million records). Keys in
/// the query's order ('1', '2', ... '10') are far from text order ('1', '10', '100').
fn a_first_run_fills_the_index_of_pending_keys_in_order() {
    let mut db = fresh_database(cluster(), "scale_key_order");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE EXTENSION pgstattuple;
         CREATE TABLE t AS SELECT g AS id, 'account ' || g AS name FROM generate_series(1, 50000) g;
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM t');
         SELECT vitally.sync('s');",
    )
    .unwrap();
    let (leaves, density): (i64, f64) = {
        let row = db.query_one("SELECT leaf_pages, avg_leaf_density FROM pgstatindex('vitally.record_pending_key')", &[]).unwrap();
        (row.get(0), row.get(1))
    };
    assert!(leaves > 50, "50,000 keys fill {leaves} leaf pages: the test no longer measures");
    assert!(density >= 85.0, "the index of pending keys is {density}% full over {leaves} leaf pages: records are queued out of key order");
}

/// The queue's keys compare as bytes (COLLATE "C"): the indexes of pending and failed
/// keys and of what was delivered, and the sort of a first run, call no strcoll() per
/// comparison (a million-record first run queued in 7.0 s instead of 8.7 s under
/// C.UTF-8). Equality is what it was under any deterministic collation: keys that
/// differ in case or in Unicode normalisation are distinct records, also when the
/// user's key column has a case-insensitive collation. vitally.records shows keys in
/// the database's collation, so a user's join with a text column of theirs works.
fn keys_compare_as_bytes_in_the_queue_and_still_join_the_users_text() {
    let vitally = emulator(Faults::default());
    let mut db = cluster().admin(APP_DB);
    emulator_destination(&mut db, "sc_bytes", &vitally);
    let not_c: i64 = scalar(
        &mut db,
        "SELECT count(*) FROM pg_catalog.pg_index i, pg_catalog.unnest(i.indcollation::oid[]) c
          WHERE i.indrelid IN ('vitally.record'::regclass, 'vitally.delivery_state'::regclass)
            AND c <> 0 AND c <> 'pg_catalog.\"C\"'::regcollation::oid",
    );
    assert_eq!(not_c, 0, "an index of the queue or of the delivery state compares keys by the database's collation");
    let c_indexes: i64 = scalar(
        &mut db,
        "SELECT count(*) FROM pg_catalog.pg_index i, pg_catalog.unnest(i.indcollation::oid[]) c
          WHERE i.indrelid IN ('vitally.record'::regclass, 'vitally.delivery_state'::regclass)
            AND c = 'pg_catalog.\"C\"'::regcollation::oid",
    );
    assert_eq!(c_indexes, 3, "pending keys, failed keys and delivery state are indexed by key");
    db.batch_execute(
        "CREATE COLLATION IF NOT EXISTS sc_bytes_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE sc_bytes (id text COLLATE sc_bytes_ci, v int);
         INSERT INTO sc_bytes VALUES ('sc_bytes_a', 1), ('SC_BYTES_A', 2), ('sc_bytes_\u{e9}', 3), ('sc_bytes_e\u{301}', 4), ('sc_bytes_b', 5);
         CREATE TABLE sc_bytes_names (name text);
         INSERT INTO sc_bytes_names SELECT id FROM sc_bytes;
         SELECT vitally.create_sync('sc_bytes', 'sc_bytes', 'account', 'upsert', 'SELECT * FROM sc_bytes', 'id');",
    )
    .unwrap();
    assert_eq!(sync_and_wait(&mut db, "sc_bytes", 60), "succeeded");
    let delivered: i64 =
        scalar(&mut db, "SELECT count(DISTINCT sync_key) FROM vitally.records WHERE sync_name = 'sc_bytes' AND status = 'delivered'");
    assert_eq!(delivered, 5, "keys that differ in case or normalisation are records of their own");
    for key in ["sc_bytes_a", "SC_BYTES_A", "sc_bytes_\u{e9}", "sc_bytes_e\u{301}"] {
        assert!(vitally.object("accounts", key).is_some(), "{key:?} reached Vitally as an account of its own");
    }
    let joined: i64 =
        scalar(&mut db, "SELECT count(*) FROM vitally.records r JOIN sc_bytes_names n ON n.name = r.sync_key WHERE r.sync_name = 'sc_bytes'");
    assert_eq!(joined, 5, "vitally.records joins a user's text column by key");
    let one: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.records WHERE sync_name = 'sc_bytes' AND sync_key = 'SC_BYTES_A'");
    assert_eq!(one, 1);
    // A re-run finds each key's delivery state: nothing changed, nothing queued.
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('sc_bytes')");
    let (queued, unchanged): (i64, i64) = {
        let row = db.query_one("SELECT records_queued, records_unchanged FROM vitally.sync_runs WHERE id = $1", &[&run]).unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((queued, unchanged), (0, 5));
}

/// The buffers a statement used, from EXPLAIN (ANALYZE, BUFFERS): its own and its
/// nested statements' (a function's SPI statements count in the top plan).
fn buffers(db: &mut Client, sql: &str) -> serde_json::Value {
    let plan: serde_json::Value = db.query_one(&format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"), &[]).unwrap().get(0);
    plan[0]["Plan"].clone()
}

/// A re-run compares each row with what was delivered as the query hands it over: an
/// unchanged row writes nothing (before, every row was written to a temporary table and
/// a million keys were joined with the delivery state, 3 s for a million rows), and
/// only the changed rows' records are written. The source and the delivery state are
/// each read once.
fn a_re_run_writes_only_the_rows_that_changed_and_reads_each_page_once() {
    let mut db = fresh_database(cluster(), "scale_rerun");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE t AS SELECT g AS id, 'account ' || g AS name, g % 7 AS v FROM generate_series(1, 50000) g;
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM t');",
    )
    .unwrap();
    let first = buffers(&mut db, "SELECT vitally.sync('s')");
    deliver_by_hand(&mut db, "s");
    db.batch_execute("VACUUM ANALYZE t, vitally.delivery_state, vitally.record").unwrap();
    let source: i64 = scalar(&mut db, "SELECT relpages::int8 FROM pg_class WHERE oid = 't'::regclass");
    let state: i64 = scalar(&mut db, "SELECT relpages::int8 FROM pg_class WHERE oid = 'vitally.delivery_state'::regclass");
    let written = |plan: &serde_json::Value| plan["Local Dirtied Blocks"].as_i64().unwrap() + plan["Local Written Blocks"].as_i64().unwrap();
    let shared = |plan: &serde_json::Value| plan["Shared Hit Blocks"].as_i64().unwrap() + plan["Shared Read Blocks"].as_i64().unwrap();
    // The lesser of two: the other tests' catalog changes can overflow the shared queue
    // of invalidations, and a backend that falls behind re-reads its catalog caches
    // (about a thousand pages) in whatever statement it runs next.
    let unchanged = [buffers(&mut db, "SELECT vitally.sync('s')"), buffers(&mut db, "SELECT vitally.sync('s')")]
        .into_iter()
        .min_by_key(|plan| shared(plan))
        .unwrap();
    assert!(written(&first) > 300, "the first run writes its 50,000 records ({} local pages): the test no longer measures", written(&first));
    assert!(written(&unchanged) <= 5, "an unchanged re-run wrote {} local pages", written(&unchanged));
    assert_eq!(unchanged["Temp Written Blocks"].as_i64().unwrap(), 0, "nothing spilled to disk");
    let read = shared(&unchanged);
    // About a thousand are the call's own (catalog entries of its temporary table and
    // function, the run's row): reading the source or the state twice would exceed it.
    assert!(read <= source + state + 1200, "an unchanged re-run touched {read} shared pages for {source} of source and {state} of state");
    db.batch_execute("UPDATE t SET v = v + 1 WHERE id % 100 = 0").unwrap();
    let changed = buffers(&mut db, "SELECT vitally.sync('s')");
    assert!(written(&changed) <= 20, "500 changed rows wrote {} local pages", written(&changed));
    let queued: i64 = scalar(&mut db, "SELECT records_queued FROM vitally.sync_runs ORDER BY id DESC LIMIT 1");
    assert_eq!(queued, 500);
}

/// A full run of 10,000 rows or more keeps the order it read its keys in, for the next
/// run to find what was delivered in that order (the lookups themselves are counted in
/// vitally-planner's tests). An order that still fits is not written again; one that no
/// longer does is; the result is the same either way; only the extension's owner reads
/// it; reset() and dropping the sync remove it.
fn a_run_keeps_the_order_it_read_its_keys_in_and_writes_it_only_when_it_moved() {
    let mut db = fresh_database(cluster(), "scale_read_order");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE t AS SELECT g AS id, g % 7 AS v FROM generate_series(1, 20000) g;
         CREATE TABLE small AS SELECT g AS id FROM generate_series(1, 500) g;
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM t');
         SELECT vitally.create_sync('small', 'd', 'account', 'upsert', 'SELECT * FROM small');
         SELECT vitally.sync('s'); SELECT vitally.sync('small');",
    )
    .unwrap();
    let kept = |db: &mut Client| -> (i64, String) {
        let r = db
            .query_one(
                "SELECT coalesce(octet_length(o.keys), 0)::int8, coalesce(o.xmin::text, '') FROM vitally.sync s LEFT JOIN vitally.read_order o ON o.sync_id = s.id WHERE s.name = 's'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let queued = |db: &mut Client, sync: &str| -> i64 {
        scalar(db, &format!("SELECT records_queued FROM vitally.sync_runs WHERE sync_name = '{sync}' ORDER BY id DESC LIMIT 1"))
    };
    let (bytes, first) = kept(&mut db);
    assert_eq!(bytes, 20_000 * 8, "a key hash of 8 bytes per row");
    let small: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.read_order o JOIN vitally.sync s ON s.id = o.sync_id WHERE s.name = 'small'");
    assert_eq!(small, 0, "a sync of 500 rows keeps no order");
    deliver_by_hand(&mut db, "s");
    db.batch_execute("SELECT vitally.sync('s')").unwrap();
    assert_eq!(queued(&mut db, "s"), 0);
    assert_eq!(kept(&mut db).1, first, "an unchanged re-run in the same order does not write it again");
    // Rows changed (moved to the end of the heap), deleted (a range, past the lookahead),
    // added: under 5% out of order, so the order is kept as it is.
    db.batch_execute(
        "UPDATE t SET v = v + 1 WHERE id % 100 = 0;
         DELETE FROM t WHERE id BETWEEN 5001 AND 5600;
         INSERT INTO t SELECT g, 0 FROM generate_series(20001, 20300) g;
         SELECT vitally.sync('s');",
    )
    .unwrap();
    assert_eq!(queued(&mut db, "s"), 200 - 6 + 300, "the changed rows still there and the new ones, nothing else");
    let pending: Vec<String> = db
        .query("SELECT sync_key FROM vitally.records WHERE sync_name = 's' AND status = 'pending' ORDER BY sync_key::int", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<String> = (1..=20_300).filter(|i| (i % 100 == 0 && !(5001..=5600).contains(i)) || *i > 20_000).map(|i| i.to_string()).collect();
    assert_eq!(pending, expected);
    assert_eq!(kept(&mut db).1, first, "95% of the rows where the order put them: not written again");
    deliver_by_hand(&mut db, "s");
    // The same rows in another order: nothing is queued, and the new order is kept.
    db.batch_execute(
        "CREATE TABLE t2 AS SELECT * FROM t ORDER BY md5(id::text); DROP TABLE t; ALTER TABLE t2 RENAME TO t;
         SELECT vitally.sync('s');",
    )
    .unwrap();
    assert_eq!(queued(&mut db, "s"), 0, "reordered, unchanged");
    let (bytes, second) = kept(&mut db);
    assert_eq!(bytes, 19_700 * 8);
    assert_ne!(second, first, "an order that no longer fits is written again");
    db.batch_execute("UPDATE t SET v = v + 1 WHERE id % 1000 = 7; SELECT vitally.sync('s')").unwrap();
    assert_eq!(queued(&mut db, "s"), 20, "in the new order, exactly the rows that changed");
    // No other role holds anything on it either: 13_elevation checks every object's grants.
    let user: bool = scalar(&mut db, "SELECT has_table_privilege('vitally_user', 'vitally.read_order', 'SELECT, INSERT, UPDATE, DELETE')");
    assert!(!user, "only the extension's owner reads or writes the order");
    db.batch_execute("SELECT vitally.reset('s')").unwrap();
    assert_eq!(kept(&mut db).0, 0, "reset() forgets the order with what was delivered");
    db.batch_execute("SELECT vitally.sync('s')").unwrap();
    assert_eq!(kept(&mut db).0, 19_700 * 8, "and the next run keeps its own");
    db.batch_execute("SELECT vitally.drop_sync('s')").unwrap();
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM vitally.read_order"), 0, "dropping the sync drops its order");
}

/// Buffers (hit and read) a statement touched, from EXPLAIN (ANALYZE, BUFFERS).
fn pages(db: &mut Client, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> i64 {
    let plan: serde_json::Value = db.query_one(&format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"), params).unwrap().get(0);
    let top = &plan[0]["Plan"];
    top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
}

/// With 19,900 of a run's 20,000 records delivered and not yet vacuumed, a claim that
/// resumes where the last one ended, and finishing the run, read a few pages; a claim
/// from the beginning walks the entries the delivered records left (as every claim and
/// every finishing check did before, so delivery slowed down as the queue grew).
fn claims_and_finished_runs_read_pages_by_what_they_take_not_by_what_was_delivered() {
    let mut db = fresh_database(cluster(), "scale_pages");
    destination(&mut db, "d");
    db.batch_execute(
        "ALTER TABLE vitally.record SET (autovacuum_enabled = false);
         CREATE TABLE t AS SELECT g AS id, g % 7 AS v FROM generate_series(1, 20000) g;
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM t');",
    )
    .unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    let sent = db.query("SELECT id, version FROM vitally.record WHERE status = 'pending' ORDER BY next_attempt_at, id LIMIT 19900", &[]).unwrap();
    let ids: Vec<i64> = sent.iter().map(|r| r.get(0)).collect();
    let versions: Vec<i32> = sent.iter().map(|r| r.get(1)).collect();
    let n = ids.len();
    let outcomes = (vec!["delivered"; n], vec![1i32; n], vec![0f64; n], vec![Some(200i32); n], vec![None::<String>; n], vec![1i64; n]);
    db.query(RECORD_OUTCOMES, &[&ids, &versions, &outcomes.0, &outcomes.1, &outcomes.2, &outcomes.3, &outcomes.4, &outcomes.5]).unwrap();
    let last = db.query_one("SELECT next_attempt_at, id FROM vitally.record WHERE id = $1", &[&ids[n - 1]]).unwrap();
    let (at, id): (std::time::SystemTime, i64) = (last.get(0), last.get(1));
    let sync_id: i64 = scalar(&mut db, "SELECT id FROM vitally.sync WHERE name = 's'");
    let none: Vec<i64> = vec![];
    let resumed = pages(&mut db, CLAIM, &[&sync_id, &1000i64, &at, &id, &none]);
    let from_start = pages(&mut db, CLAIM, &[&sync_id, &1000i64, &std::time::UNIX_EPOCH, &0i64, &none]);
    let finishing = pages(&mut db, FINISH_RUNS, &[&vec![run]]);
    assert!(resumed <= 30, "a resumed claim of 100 records read {resumed} pages");
    assert!(from_start >= 3 * resumed, "from the start {from_start} pages, resumed {resumed}: the test no longer shows the walk");
    assert!(finishing <= 10, "finishing a run read {finishing} pages");
    let status: String = scalar(&mut db, &format!("SELECT status FROM vitally.sync_runs WHERE id = {run}"));
    assert_eq!(status, "running", "100 records are still pending");
}

/// What a statement's plan went through, from EXPLAIN (ANALYZE, FORMAT JSON): rows of
/// `vitally.record` read (out of every scan of it or of one of its indexes, and filtered
/// out there, times loops), the scans that read them, and pairs of rows a join compared
/// and threw away.
fn rows_touched(db: &mut Client, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> (f64, Vec<String>, f64) {
    fn walk(node: &serde_json::Value, rows: &mut f64, scans: &mut Vec<String>, joined: &mut f64) {
        let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
        if node["Relation Name"] == "record" || node["Index Name"].as_str().is_some_and(|n| n.starts_with("record_")) {
            let out = node["Actual Rows"].as_f64().unwrap_or(0.0) + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0);
            *rows += out * loops;
            scans.push(format!("{} {}", node["Node Type"], node["Index Name"].as_str().unwrap_or("")));
        }
        *joined += node["Rows Removed by Join Filter"].as_f64().unwrap_or(0.0) * loops;
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, rows, scans, joined);
        }
    }
    let plan: serde_json::Value = db.query_one(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}"), params).unwrap().get(0);
    let (mut rows, mut scans, mut joined) = (0.0, Vec::new(), 0.0);
    walk(&plan[0]["Plan"], &mut rows, &mut scans, &mut joined);
    (rows, scans, joined)
}

/// Recording the outcomes of 100 records reads those 100 records, by primary key, also
/// when the queue's statistics (taken when nothing was pending) say that pending records
/// are rare. Before, the planner then went through every entry of the index of due
/// records for each outcome (and-ed with the ids): 10 to 20 ms per outcome with 300,000
/// queued, the main reason delivery slowed down as its backlog grew; and with that index
/// ruled out, it compared every record with every outcome in a nested loop.
fn an_outcome_finds_its_records_by_id_whatever_the_statistics_say() {
    outcomes_read_only_their_records("scale_outcomes", 20000, 100);
}

/// The same for a whole job (batch 100 x concurrency 4 x 8 requests) against a queue of
/// 200,000 records: many outcomes at once do not turn the statement into a pass over the
/// queue, which cost each job the size of the backlog (the planner hashed a sequential
/// scan of all 200,000 records: the filter on status made it look a few hundred long).
fn a_jobs_outcomes_find_their_records_by_id_in_a_large_queue() {
    outcomes_read_only_their_records("scale_job_outcomes", 100_000, 3200);
}

fn outcomes_read_only_their_records(database: &str, rows: i64, n: usize) {
    let mut db = delivered_sync(database, rows);
    db.batch_execute("ANALYZE vitally.record; UPDATE t SET v = v + 1; SELECT vitally.sync('s');").unwrap();
    let sent = db.query("SELECT id, version FROM vitally.record WHERE status = 'pending' ORDER BY id LIMIT $1", &[&(n as i64)]).unwrap();
    let ids: Vec<i64> = sent.iter().map(|r| r.get(0)).collect();
    let versions: Vec<i32> = sent.iter().map(|r| r.get(1)).collect();
    assert_eq!(ids.len(), n);
    let outcomes = (vec!["delivered"; n], vec![1i32; n], vec![0f64; n], vec![Some(200i32); n], vec![None::<String>; n], vec![1i64; n]);
    // As the worker runs it.
    for (name, value) in RECORD_OUTCOMES_SETTINGS {
        db.batch_execute(&format!("SET {} = {}", name.to_str().unwrap(), value.to_str().unwrap())).unwrap();
    }
    let (read, scans, joined) =
        rows_touched(&mut db, RECORD_OUTCOMES, &[&ids, &versions, &outcomes.0, &outcomes.1, &outcomes.2, &outcomes.3, &outcomes.4, &outcomes.5]);
    // The Update node itself counts the rows it wrote, so at most twice n.
    assert!(read <= 2.0 * n as f64, "recording {n} outcomes read {read} rows of vitally.record, in {scans:?}");
    assert!(joined <= n as f64, "recording {n} outcomes compared and threw away {joined} pairs of rows (a nested loop over all of them)");
    let delivered: i64 = scalar(&mut db, &format!("SELECT count(*) FROM vitally.record WHERE status = 'delivered' AND id <= {}", ids[n - 1]));
    assert!(delivered >= n as i64, "the outcomes were recorded: {delivered}");
}

/// The worker's claims and outcomes run from plans it keeps: counted by
/// pg_stat_statements, each is planned a few times (the plan cache's first custom plans,
/// again after the commit that queued the records), not on every call; before, parsing
/// and planning them was a quarter of the worker's CPU. And one busy sync beside three
/// idle ones fills whole jobs (before, each sync got a quarter of a job, so four times the
/// outcomes to record).
fn the_worker_plans_its_claims_and_outcomes_once_and_fills_each_job() {
    let cluster = Cluster::with_worker(
        "kept-plans",
        &[
            "shared_preload_libraries = 'vitally_sync, pg_stat_statements'",
            "pg_stat_statements.track = all",
            "pg_stat_statements.track_planning = on",
            // Jobs of 5 x 4 x 8 = 160 records: many claims and outcomes for a few thousand.
            "vitally.batch_size = 5",
        ],
    );
    let vitally = emulator(Faults::default());
    let mut db = cluster.admin("app");
    emulator_destination(&mut db, "d", &vitally);
    db.batch_execute(
        "CREATE EXTENSION pg_stat_statements;
         CREATE TABLE busy AS SELECT g AS id, g % 7 AS v FROM generate_series(1, 6400) g;
         CREATE TABLE idle AS SELECT g AS id FROM generate_series(1, 3) g;
         SELECT vitally.create_sync('busy', 'd', 'account', 'upsert', 'SELECT * FROM busy');
         SELECT vitally.create_sync('idle_' || i, 'd', 'account', 'upsert', 'SELECT * FROM idle') FROM generate_series(1, 3) i;",
    )
    .unwrap();
    for i in 1..=3 {
        assert_eq!(sync_and_wait(&mut db, &format!("idle_{i}"), 60), "succeeded");
    }
    db.batch_execute("SELECT pg_stat_statements_reset()").unwrap();
    assert_eq!(sync_and_wait(&mut db, "busy", 120), "succeeded");
    let counted = |db: &mut Client, sql: &str| -> (i64, i64) {
        // By its beginning: pg_stat_statements shows constants as parameters.
        let row = db
            .query_one(
                "SELECT coalesce(sum(calls), 0)::int8, coalesce(sum(plans), 0)::int8 FROM pg_stat_statements WHERE left(query, 60) = left($1, 60)",
                &[&sql],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let (claims, claim_plans) = counted(&mut db, CLAIM);
    let (outcomes, outcome_plans) = counted(&mut db, RECORD_OUTCOMES);
    assert!(claims >= 40, "{claims} claims: the test no longer makes many");
    assert!(claim_plans * 3 <= claims, "{claims} claims planned {claim_plans} times");
    // 40 jobs (fewer statements when two jobs finish together); with a quarter of a job
    // per sync it was 160.
    assert!((10..=60).contains(&outcomes), "6,400 records in jobs of 160 took {outcomes} outcome statements");
    assert!(outcome_plans * 3 <= outcomes, "{outcomes} outcome statements planned {outcome_plans} times");
}

/// A run is over when none of its records is pending, also when a newer run took over
/// its records before they were sent (before, it stayed 'running' for ever).
fn a_run_whose_records_a_newer_run_took_over_is_finished() {
    let mut db = fresh_database(cluster(), "scale_took_over");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE t AS SELECT g AS id, 1 AS v FROM generate_series(1, 3) g;
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM t');",
    )
    .unwrap();
    let first: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    db.batch_execute("UPDATE t SET v = 2 WHERE id IN (1, 2)").unwrap();
    let second: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    let status = |db: &mut Client, run: i64| -> String { scalar(db, &format!("SELECT status FROM vitally.sync_runs WHERE id = {run}")) };
    assert_eq!(status(&mut db, first), "running", "record 3 is still the first run's");
    db.batch_execute("UPDATE t SET v = 3 WHERE id = 3").unwrap();
    let third: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    assert_eq!(status(&mut db, first), "succeeded", "its last pending record went to run {third}");
    assert_eq!(status(&mut db, second), "running");
    assert_eq!(deliver_by_hand(&mut db, "s"), 3);
    assert_eq!(status(&mut db, second), "succeeded");
    assert_eq!(status(&mut db, third), "succeeded");
}

/// Claims resume after the last record claimed, in the order of next_attempt_at, which
/// a transaction sets when it starts: a change queued by a transaction older than the
/// last claim sorts before where claims resume. Its commit rings the doorbell, and the
/// worker starts over (without that it waited for the periodic start-over, 30 s).
fn a_change_queued_by_a_transaction_older_than_the_last_claim_is_delivered_at_once() {
    let vitally = emulator(Faults::default());
    let mut db = cluster().admin(APP_DB);
    emulator_destination(&mut db, "sc_late", &vitally);
    db.batch_execute(
        "CREATE TABLE sc_late AS SELECT 'late_' || g AS id, 1 AS v FROM generate_series(1, 3) g;
         SELECT vitally.create_sync('sc_late', 'sc_late', 'account', 'upsert', 'SELECT * FROM sc_late', 'id');",
    )
    .unwrap();
    let mut old = cluster().admin(APP_DB);
    old.batch_execute("BEGIN; SELECT now()").unwrap();
    assert_eq!(sync_and_wait(&mut db, "sc_late", 60), "succeeded");
    db.batch_execute("UPDATE sc_late SET v = 2 WHERE id = 'late_2'").unwrap();
    assert_eq!(sync_and_wait(&mut db, "sc_late", 60), "succeeded", "the worker claimed a record queued after the old transaction began");
    old.batch_execute("UPDATE sc_late SET v = 3 WHERE id = 'late_3'; SELECT vitally.sync('sc_late'); COMMIT").unwrap();
    let late: std::time::SystemTime =
        scalar(&mut db, "SELECT queued_at FROM vitally.records WHERE sync_name = 'sc_late' AND sync_key = 'late_3' ORDER BY id DESC LIMIT 1");
    let claimed: std::time::SystemTime =
        scalar(&mut db, "SELECT queued_at FROM vitally.records WHERE sync_name = 'sc_late' AND sync_key = 'late_2' ORDER BY id DESC LIMIT 1");
    assert!(late < claimed, "the old transaction's record sorts before the last one claimed");
    eventually("the old transaction's change in Vitally", Duration::from_secs(10), || {
        (vitally.object("accounts", "late_3").map(|o| o.traits["v"].clone()) == Some(serde_json::json!(3))).then_some(())
    });
}

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
    // The worker updates each record once, with its outcome. Other tests only add to the count.
    let after = eventually("the worker's updates in pg_stat_user_tables", Duration::from_secs(10), || {
        let n = updated(&mut db);
        (n - before >= 300).then_some(n)
    });
    assert!(after - before >= 300, "{before} -> {after}");
}
