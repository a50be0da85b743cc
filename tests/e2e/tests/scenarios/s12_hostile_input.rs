//! Input nobody planned for, and users who try what they should not: each case ends
//! with its exact error or record status, and loses nothing else.

use crate::{cluster, APP_DB};
use std::time::Duration;
use vitally_e2e::{
    destination, emulator, emulator_destination, eventually, fresh_database, records_queued, scalar, sql_error, sync_and_wait, Faults,
};

crate::trials!("12_hostile_input":
    unusual_postgres_types_become_exact_json,
    keys_with_quotes_and_unicode_arrive_as_they_are,
    a_query_that_fails_half_way_queues_nothing_and_blocks_no_other_sync,
    a_query_that_changes_data_is_refused_or_runs_only_in_the_callers_transaction,
    dropping_a_destination_mid_delivery_leaves_the_worker_serving_the_others,
    no_key_in_pg_stat_activity_notices_or_warnings,
    the_worker_never_runs_a_users_sql_and_names_cannot_inject_any,
);

fn unusual_postgres_types_become_exact_json() {
    let mut db = cluster().admin(APP_DB);
    let vitally = emulator(Faults::default());
    emulator_destination(&mut db, "hostile_types_d", &vitally);
    db.batch_execute(
        "CREATE TYPE hostile_mood AS ENUM ('sad', 'happy');
         CREATE TYPE hostile_pair AS (a int, b text);
         CREATE DOMAIN hostile_positive AS int CHECK (VALUE > 0);
         CREATE TABLE hostile_types AS SELECT 'odd-1' AS id, 12.5::money AS m, '10.0.0.1/8'::inet AS ip, '08:00:2b:01:02:03'::macaddr AS mac,
             B'1010' AS bits, '\\xdeadbeef'::bytea AS raw, 'a fat cat'::tsvector AS tsv, point(1, 2) AS pt, int4range(1, 5) AS rng,
             '<a>x</a>'::xml AS doc, 'happy'::hostile_mood AS mood, ROW(1, 'x')::hostile_pair AS pr, 5::hostile_positive AS pos,
             'abc'::char(5) AS ch, 'NaN'::float8 AS fnan, '-Infinity'::float8 AS finf, 'NaN'::numeric AS nnan,
             'infinity'::timestamptz AS tinf, ARRAY[[1, 2], [3, 4]] AS grid, 'null'::jsonb AS jnull,
             123456789012345678901234567890.123456789::numeric AS huge, 9223372036854775807::bigint AS maxbig,
             repeat('é', 100000) AS long_text;
         SELECT vitally.create_sync('hostile_types', 'hostile_types_d', 'account', 'upsert', 'SELECT * FROM hostile_types');",
    )
    .unwrap();
    let expected = r#"{"accountId": "odd-1", "traits": {
        "m": "$12.50", "ip": "10.0.0.1/8", "mac": "08:00:2b:01:02:03", "bits": "1010", "raw": "\\xdeadbeef",
        "tsv": "'a' 'cat' 'fat'", "pt": "(1,2)", "rng": "[1,5)", "doc": "<a>x</a>", "mood": "happy", "pr": {"a": 1, "b": "x"},
        "pos": 5, "ch": "abc  ", "fnan": "NaN", "finf": "-Infinity", "nnan": "NaN", "tinf": null, "grid": [[1, 2], [3, 4]],
        "jnull": null, "huge": 123456789012345678901234567890.123456789, "maxbig": 9223372036854775807}}"#;
    let same: bool = db
        .query_one(
            "SELECT (payload - 'traits') || jsonb_build_object('traits', (payload->'traits') - 'long_text') = $1::text::jsonb
               FROM vitally.preview('hostile_types')",
            &[&expected],
        )
        .unwrap()
        .get(0);
    assert!(same, "preview gives the documented JSON");
    assert_eq!(sync_and_wait(&mut db, "hostile_types", 30), "succeeded");
    let traits = vitally.object("accounts", "odd-1").unwrap().traits;
    // Numbers reach Vitally digit for digit, beyond what a double holds.
    assert_eq!(traits["huge"].to_string(), "123456789012345678901234567890.123456789");
    assert_eq!(traits["maxbig"].to_string(), "9223372036854775807");
    assert_eq!(traits["long_text"].as_str().unwrap().chars().count(), 100_000, "200 kB of text arrives whole");
}

fn keys_with_quotes_and_unicode_arrive_as_they_are() {
    let mut db = cluster().admin(APP_DB);
    let vitally = emulator(Faults::default());
    emulator_destination(&mut db, "hostile_keys_d", &vitally);
    let keys = ["O'Brien", "\"quoted\"", "crab 🦀", "ünïcödé", "back\\slash", "semi;colon--", "  spaced  ", "$$dollar$$"];
    db.execute("CREATE TABLE hostile_keys AS SELECT k AS id, k AS label FROM unnest($1::text[]) k", &[&&keys[..]]).unwrap();
    db.batch_execute(
        "SELECT vitally.create_sync('it''s keys', 'hostile_keys_d', 'account', 'upsert', 'SELECT * FROM hostile_keys');
         SELECT vitally.create_sync('it''s events', 'hostile_keys_d', 'event', 'append',
                $q$SELECT id, 'Seen ' || id AS event, id AS account_id FROM hostile_keys$q$);",
    )
    .unwrap();
    assert_eq!(sync_and_wait(&mut db, "it''s keys", 30), "succeeded");
    assert_eq!(sync_and_wait(&mut db, "it''s events", 30), "succeeded");
    for k in keys {
        let account = vitally.object("accounts", k).unwrap_or_else(|| panic!("account {k:?} arrived"));
        assert_eq!(account.traits["label"], k);
    }
    let events = vitally.received().into_iter().filter(|r| r.kind == "track").count();
    assert_eq!(events, keys.len());
    // Nothing changed, nothing sent; the records view shows the keys as they are.
    let shown: i64 = db.query_one("SELECT count(*) FROM vitally.records WHERE sync_key = ANY($1)", &[&&keys[..]]).unwrap().get(0);
    assert_eq!(shown, 2 * keys.len() as i64);
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('it''s events')");
    assert_eq!(records_queued(&mut db, run), 0);
}

fn a_query_that_fails_half_way_queues_nothing_and_blocks_no_other_sync() {
    let mut db = fresh_database(cluster(), "hostile_fail");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g;
         SELECT vitally.create_sync('breaks', 'd', 'account', 'upsert', 'SELECT id, 1 / (500 - id) AS x FROM t');
         SELECT vitally.create_sync('works', 'd', 'account', 'upsert', 'SELECT id FROM t');",
    )
    .unwrap();
    let err = sql_error(db.batch_execute("SELECT vitally.sync('breaks')"));
    assert_eq!((err.code.as_str(), err.message.as_str()), ("22012", "the query of sync \"breaks\" failed: division by zero"));
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM vitally.sync_runs"), 0, "no run, no record");
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM vitally.records"), 0);
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('works')");
    assert_eq!(records_queued(&mut db, run), 1000);
}

fn a_query_that_changes_data_is_refused_or_runs_only_in_the_callers_transaction() {
    let mut db = fresh_database(cluster(), "hostile_write");
    destination(&mut db, "d");
    db.batch_execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 3) g;").unwrap();
    let err =
        sql_error(db.batch_execute(
            "SELECT vitally.create_sync('cte', 'd', 'account', 'upsert', 'WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone')",
        ));
    assert_eq!(err.code, "0A000");
    assert!(err.message.starts_with("the query of sync \"cte\" failed: WITH clause containing a data-modifying statement"), "{}", err.message);
    assert!(err.hint.unwrap().starts_with("A sync's query only reads"));
    // A function with side effects runs with the query: in the caller's transaction,
    // so a rollback takes back its writes along with the run.
    db.batch_execute(
        "CREATE TABLE audit (id int);
         CREATE FUNCTION audited(i int) RETURNS int LANGUAGE sql AS $$ INSERT INTO audit VALUES (i) RETURNING i $$;
         SELECT vitally.create_sync('fx', 'd', 'account', 'upsert', 'SELECT audited(id) AS id FROM t');",
    )
    .unwrap();
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM audit"), 0, "defining the sync ran nothing");
    db.batch_execute("BEGIN; SELECT vitally.sync('fx'); ROLLBACK;").unwrap();
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM audit"), 0);
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM vitally.records"), 0);
    db.batch_execute("SELECT vitally.sync('fx')").unwrap();
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM audit"), 3);
}

fn dropping_a_destination_mid_delivery_leaves_the_worker_serving_the_others() {
    let mut db = cluster().admin(APP_DB);
    let slow = emulator(Faults { latency_ms: 2_000, ..Faults::default() });
    let fast = emulator(Faults::default());
    emulator_destination(&mut db, "hostile_gone_d", &slow);
    emulator_destination(&mut db, "hostile_kept_d", &fast);
    db.batch_execute(
        "CREATE TABLE hostile_gone AS SELECT 'g' || g AS id FROM generate_series(1, 50) g;
         SELECT vitally.create_sync('hostile_gone', 'hostile_gone_d', 'account', 'upsert', 'SELECT * FROM hostile_gone');
         SELECT vitally.create_sync('hostile_kept', 'hostile_kept_d', 'account', 'upsert', 'SELECT * FROM hostile_gone');
         SELECT vitally.sync('hostile_gone');",
    )
    .unwrap();
    let worker: i32 = scalar(&mut db, "SELECT vitally.worker_pid()");
    eventually("a request to the slow destination in flight", Duration::from_secs(20), || (slow.counters().in_flight > 0).then_some(()));
    let err = sql_error(db.batch_execute("SELECT vitally.drop_destination('hostile_gone_d')"));
    assert_eq!(err.code, "2BP01", "{}", err.message);
    db.batch_execute("SELECT vitally.drop_destination('hostile_gone_d', cascade => true)").unwrap();
    let err = sql_error(db.batch_execute("SELECT vitally.sync('hostile_gone')"));
    assert_eq!((err.code.as_str(), err.message.as_str()), ("42704", "sync \"hostile_gone\" does not exist"));
    assert_eq!(sync_and_wait(&mut db, "hostile_kept", 30), "succeeded");
    eventually("the slow request to come back", Duration::from_secs(20), || (slow.counters().in_flight == 0).then_some(()));
    assert_eq!(sync_and_wait(&mut db, "hostile_kept", 30), "succeeded", "still serving after the orphan outcomes");
    assert_eq!(scalar::<i32>(&mut db, "SELECT vitally.worker_pid()"), worker, "the same worker, never restarted");
    assert_eq!(fast.count("accounts"), 50);
}

const SECRET: &str = "sk-live-hostile-0123456789";

fn no_key_in_pg_stat_activity_notices_or_warnings() {
    let mut admin = fresh_database(cluster(), "hostile_activity");
    admin
        .batch_execute(
            "CREATE ROLE hostile_keyholder LOGIN; GRANT vitally_user TO hostile_keyholder;
             CREATE ROLE hostile_snoop LOGIN IN ROLE pg_read_all_stats;
             CREATE TABLE t AS SELECT 1 AS id; GRANT SELECT ON t TO hostile_keyholder;",
        )
        .unwrap();
    let (mut owner, notices) = cluster().connect_with_notices("hostile_activity", "hostile_keyholder");
    owner.batch_execute("SET client_min_messages = debug5").unwrap();
    owner
        .batch_execute(&format!("SELECT vitally.create_destination('d', analytics_api_key => '{SECRET}', analytics_url => 'http://127.0.0.1:9/a')"))
        .unwrap();
    let mut snoop = cluster().connect("hostile_activity", "hostile_snoop");
    let seen: Vec<String> = snoop.query("SELECT coalesce(query, '') FROM pg_stat_activity", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(seen.iter().any(|q| q.contains("statement hidden by vitally_sync")), "the session's row says it was hidden: {seen:?}");
    assert!(!seen.iter().any(|q| q.contains(SECRET)), "a key in pg_stat_activity: {seen:?}");
    // Extended protocol: the key is a bound parameter.
    owner.execute("SELECT vitally.alter_destination('d', analytics_api_key => $1)", &[&SECRET]).unwrap();
    let _ = owner.batch_execute(&format!("SELECT vitally.alter_destination('d', analytics_api_key => '{SECRET}', region => 'mars')"));
    owner
        .batch_execute(
            "SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT id FROM t');
             SELECT vitally.sync('s'); SELECT * FROM vitally.check_destination('d');",
        )
        .unwrap();
    let seen: Vec<String> = snoop.query("SELECT coalesce(query, '') FROM pg_stat_activity", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(!seen.iter().any(|q| q.contains(SECRET)), "a key in pg_stat_activity: {seen:?}");
    let notices = notices.lock().unwrap();
    assert!(!notices.is_empty(), "debug5 brings messages");
    assert!(!notices.iter().any(|n| n.contains(SECRET)), "a key in a message: {notices:?}");
}

fn the_worker_never_runs_a_users_sql_and_names_cannot_inject_any() {
    let mut admin = cluster().admin(APP_DB);
    let vitally = emulator(Faults::default());
    admin
        .batch_execute(
            "CREATE ROLE hostile_user LOGIN; GRANT vitally_user TO hostile_user;
             CREATE TABLE hostile_victim (x int); INSERT INTO hostile_victim VALUES (1);
             CREATE TABLE hostile_seen (who text, pid int);
             GRANT INSERT ON hostile_seen TO hostile_user;
             CREATE FUNCTION hostile_witness() RETURNS text LANGUAGE sql
                 AS $$ INSERT INTO hostile_seen VALUES (current_user, pg_backend_pid()) RETURNING 'w' $$;
             GRANT EXECUTE ON FUNCTION hostile_witness() TO hostile_user;",
        )
        .unwrap();
    let mut user = cluster().connect(APP_DB, "hostile_user");
    let sync = "x'); DROP TABLE hostile_victim; --";
    user.execute(
        "SELECT vitally.create_destination($1, analytics_api_key => 'test-analytics-key', analytics_url => $2)",
        &[&"d'); DROP TABLE hostile_victim; --", &vitally.analytics_url()],
    )
    .unwrap();
    let query = r#"SELECT '''; DROP TABLE hostile_victim; --' AS id, hostile_witness() AS w, ''') --' AS note"#;
    user.execute("SELECT vitally.create_sync($1, $2, 'account', 'upsert', $3)", &[&sync, &"d'); DROP TABLE hostile_victim; --", &query]).unwrap();
    let my_pid: i32 = scalar(&mut user, "SELECT pg_backend_pid()");
    let run: i64 = user.query_one("SELECT vitally.sync($1)", &[&sync]).unwrap().get(0);
    assert_eq!(scalar::<String>(&mut user, &format!("SELECT vitally.wait({run}, '30 seconds')")), "succeeded");
    let job: i64 = user.query_one("SELECT vitally.schedule($1, '0 4 * * *')", &[&sync]).unwrap().get(0);
    let command: String = scalar(&mut admin, &format!("SELECT command FROM cron.job WHERE jobid = {job}"));
    assert_eq!(command, "SELECT vitally.sync('x''); DROP TABLE hostile_victim; --')");
    user.query_one("SELECT vitally.unschedule($1)", &[&sync]).unwrap();
    assert_eq!(scalar::<i64>(&mut admin, "SELECT count(*) FROM hostile_victim"), 1, "nothing was injected");
    // The query ran once, in the caller's session, as its owner; never in the worker.
    let seen: Vec<(String, i32)> = admin.query("SELECT who, pid FROM hostile_seen", &[]).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(seen, [("hostile_user".to_string(), my_pid)]);
    assert!(vitally.object("accounts", "'; DROP TABLE hostile_victim; --").is_some());
    user.query_one("SELECT vitally.drop_sync($1)", &[&sync]).unwrap();
}
