//! Planning a run: payloads from rows, per-record validation, and queueing only what changed.

use crate::cluster;
use serde_json::{json, Value};
use std::time::Duration;
use vitally_e2e::{deliver_by_hand, destination, eventually, fresh_database, scalar, Client};

crate::trials!("05_planning":
    every_common_type_becomes_the_documented_json,
    users_accounts_come_from_an_array_a_json_array_or_one_id,
    mappings_send_only_the_mapped_columns_and_skip_nulls_drops_nulls,
    a_bad_row_is_recorded_invalid_and_never_blocks_the_others,
    a_key_that_starts_repeating_after_delivery,
    only_changed_or_failed_records_are_queued,
    a_newer_change_replaces_the_pending_one,
    an_event_is_queued_once_ever,
    a_rollback_queues_nothing,
    preview_says_what_a_run_would_do,
    reset_makes_the_next_run_send_everything,
    a_million_rows_with_one_percent_changed_queue_exactly_those,
    queueing_into_an_emptied_queue_reads_it_a_bounded_number_of_times,
);

fn payloads(db: &mut Client, sync: &str) -> Vec<(String, Value)> {
    db.query("SELECT sync_key, payload FROM vitally.records WHERE sync_name = $1 AND status = 'pending' ORDER BY sync_key", &[&sync])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The invalid records matching `filter`, as "sync:key: reason", sorted.
fn invalid_records(db: &mut Client, filter: &str) -> Vec<String> {
    db.query(
        &format!("SELECT sync_name || ':' || sync_key || ': ' || error FROM vitally.records WHERE status = 'invalid' AND {filter} ORDER BY 1"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn run_figures(db: &mut Client, run: i64) -> (i64, i64, i64, i64) {
    let r =
        db.query_one("SELECT rows_read, records_queued, records_unchanged, records_invalid FROM vitally.sync_runs WHERE id = $1", &[&run]).unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

fn every_common_type_becomes_the_documented_json() {
    let mut db = fresh_database(cluster(), "plan_types");
    destination(&mut db, "d");
    db.batch_execute(
        "SET TimeZone = 'America/New_York';
         CREATE TABLE t AS SELECT 'a1'::text AS id, 12.50::numeric AS n, 9007199254740993::bigint AS big, true AS flag,
                'x''y'::text AS txt, '8d2a3f4e-1b1c-4d2e-9f0a-1234567890ab'::uuid AS u, '2026-03-01'::date AS d,
                '2026-03-01 12:30:00'::timestamp AS ts, '2026-03-01 12:30:00.123+02'::timestamptz AS tstz,
                '{\"a\": [1, 2]}'::json AS j, '{\"b\": null}'::jsonb AS jb, ARRAY[1, 2] AS ints, ARRAY['p', 'q'] AS texts,
                NULL::text AS nothing, '1 day'::interval AS iv;
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM t', 'id');
         SELECT vitally.sync('s');",
    )
    .unwrap();
    let (_, payload) = payloads(&mut db, "s").remove(0);
    // numeric keeps its digits (12.50, as Postgres writes it): serde_json with arbitrary_precision.
    assert_eq!(
        payload,
        json!({
            "accountId": "a1",
            "traits": {
                "n": serde_json::from_str::<serde_json::Value>("12.50").unwrap(), "big": 9007199254740993_i64, "flag": true, "txt": "x'y",
                "u": "8d2a3f4e-1b1c-4d2e-9f0a-1234567890ab", "d": "2026-03-01",
                "ts": "2026-03-01T12:30:00.000Z", "tstz": "2026-03-01T10:30:00.123Z",
                "j": {"a": [1, 2]}, "jb": {"b": null}, "ints": [1, 2], "texts": ["p", "q"],
                "nothing": null, "iv": "1 day"
            }
        })
    );
}

fn users_accounts_come_from_an_array_a_json_array_or_one_id() {
    let mut db = fresh_database(cluster(), "plan_users");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE pg_arr (id int, account_ids text[]);  INSERT INTO pg_arr VALUES (1, '{a,b}'), (2, '{}'), (3, NULL);
         CREATE TABLE js_arr (id int, account_ids jsonb);   INSERT INTO js_arr VALUES (1, '[\"a\", 7]'), (2, '[]'), (3, '\"solo\"');
         CREATE TABLE one (id int, account_ids bigint);     INSERT INTO one VALUES (1, 42), (2, NULL);
         SELECT vitally.create_sync('pg', 'd', 'user', 'upsert', 'SELECT * FROM pg_arr', 'id');
         SELECT vitally.create_sync('js', 'd', 'user', 'upsert', 'SELECT * FROM js_arr', 'id');
         SELECT vitally.create_sync('one', 'd', 'user', 'upsert', 'SELECT * FROM one', 'id');
         SELECT vitally.sync('pg'); SELECT vitally.sync('js'); SELECT vitally.sync('one');",
    )
    .unwrap();
    let lists = |db: &mut Client, sync: &str| -> Vec<Value> { payloads(db, sync).into_iter().map(|(_, p)| p["accountIds"].clone()).collect() };
    assert_eq!(lists(&mut db, "pg"), vec![json!(["a", "b"])]);
    // Vitally's ids are strings: a JSON number becomes one.
    assert_eq!(lists(&mut db, "js"), vec![json!(["a", "7"]), json!(["solo"])]);
    assert_eq!(lists(&mut db, "one"), vec![json!(["42"])]);
    assert_eq!(
        invalid_records(&mut db, "true"),
        vec![
            "js:2: a user needs at least one account: account_ids is NULL or empty",
            "one:2: a user needs at least one account: account_ids is NULL or empty",
            "pg:2: a user needs at least one account: account_ids is NULL or empty",
            "pg:3: a user needs at least one account: account_ids is NULL or empty",
        ]
    );
}

fn mappings_send_only_the_mapped_columns_and_skip_nulls_drops_nulls() {
    let mut db = fresh_database(cluster(), "plan_mappings");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE acc (id int, name text, secret text, org text, plan text);
         INSERT INTO acc VALUES (1, 'Acme', 'do not send', 'o1', NULL);
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM acc', 'id',
                mappings => '{\"traits.company_name\": \"name\", \"organizationId\": \"org\", \"traits.plan\": \"plan\"}',
                options => '{\"skip_nulls\": true}');
         SELECT vitally.sync('s');",
    )
    .unwrap();
    let (_, payload) = payloads(&mut db, "s").remove(0);
    assert_eq!(payload, json!({"accountId": "1", "organizationId": "o1", "traits": {"company_name": "Acme"}}));
}

fn a_bad_row_is_recorded_invalid_and_never_blocks_the_others() {
    let mut db = fresh_database(cluster(), "plan_invalid");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE acc (id text, note text);
         INSERT INTO acc VALUES ('ok1', 'x'), (NULL, 'no key'), ('', 'empty key'), ('dup', 'one'), ('dup', 'two'),
                                ('big', repeat('x', 1000000)), ('ok2', 'y');
         CREATE TABLE ev (id int, event text, user_id text, account_id text);
         INSERT INTO ev VALUES (1, 'Login', 'u', NULL), (2, NULL, 'u', NULL), (3, 'Login', NULL, NULL);
         CREATE TABLE nps (id int, user_id text, score numeric, responded_at text);
         INSERT INTO nps VALUES (1, 'u', 9, '2026-06-01T10:00:00Z'), (2, 'u', 11, '2026-06-01T10:00:00Z'), (3, 'u', 7.5, '2026-06-01T10:00:00Z'),
                                (4, NULL, 3, '2026-06-01T10:00:00Z'), (5, 'u', NULL, '2026-06-01T10:00:00Z'), (6, 'u', 8, NULL), (7, 'u', 8, 'yesterday');
         SELECT vitally.create_sync('acc', 'd', 'account', 'upsert', 'SELECT * FROM acc', 'id');
         SELECT vitally.create_sync('ev', 'd', 'event', 'append', 'SELECT * FROM ev', 'id');
         SELECT vitally.create_sync('nps', 'd', 'nps_response', 'upsert', 'SELECT * FROM nps', 'id');",
    )
    .unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('acc')");
    assert_eq!(run_figures(&mut db, run), (7, 2, 0, 5));
    let invalid: Vec<(Option<String>, String)> = db
        .query("SELECT sync_key, error FROM vitally.records WHERE sync_name = 'acc' AND status = 'invalid' ORDER BY sync_key NULLS FIRST, error", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(invalid[0], (None, "the sync key column \"id\" is NULL or empty: every record needs an id".to_string()));
    assert_eq!(invalid[1], (Some("".into()), "the sync key column \"id\" is NULL or empty: every record needs an id".to_string()));
    assert_eq!(invalid[2].1, "the record is 1000044 bytes of JSON, over the limit of 512000: leave large columns out of the query or the mapping");
    assert_eq!(invalid[3], (Some("dup".into()), "sync key 'dup' appears 2 times in the query's result: none of its rows is sent".to_string()));
    assert_eq!(invalid[4].0.as_deref(), Some("dup"));
    let status: String = scalar(&mut db, &format!("SELECT status FROM vitally.sync_runs WHERE id = {run}"));
    assert_eq!(status, "running", "the two valid records are still pending");

    db.batch_execute("SELECT vitally.sync('ev'); SELECT vitally.sync('nps')").unwrap();
    assert_eq!(
        invalid_records(&mut db, "sync_name <> 'acc'"),
        vec![
            "ev:2: an event needs a name: event is NULL or empty",
            "ev:3: an event needs someone who did it: user_id and account_id are NULL or empty",
            "nps:2: score must be a whole number from 0 to 10, got 11",
            "nps:3: score must be a whole number from 0 to 10, got 7.5",
            "nps:4: an NPS response needs a user: user_id is NULL or empty",
            "nps:5: score must be a whole number from 0 to 10, got NULL",
            "nps:6: respondedAt is required: responded_at is NULL or empty",
            "nps:7: respondedAt must be an ISO-8601 date-time with a time zone, like 2026-06-01T10:00:00Z, got \"yesterday\": cast responded_at to timestamptz in the query, or fix its text",
        ]
    );
    let pending: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.records WHERE status = 'pending'");
    assert_eq!(pending, 4, "ok1, ok2, event 1, response 1");
}

/// A repeat identical to what was delivered sends nothing (as it would without the
/// repeat); a repeat that differs makes every row of its key invalid, the unchanged one too.
fn a_key_that_starts_repeating_after_delivery() {
    let mut db = fresh_database(cluster(), "plan_repeat");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE t (id text, v int); INSERT INTO t VALUES ('a', 1), ('b', 2);
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM t');",
    )
    .unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    assert_eq!(run_figures(&mut db, run), (2, 2, 0, 0));
    deliver_by_hand(&mut db, "s");
    db.batch_execute("INSERT INTO t VALUES ('a', 1)").unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    assert_eq!(run_figures(&mut db, run), (3, 0, 3, 0), "an identical repeat of a delivered row sends nothing");
    db.batch_execute("INSERT INTO t VALUES ('b', 3)").unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    assert_eq!(run_figures(&mut db, run), (4, 0, 2, 2));
    let invalid: Vec<(String, String)> = db
        .query(&format!("SELECT sync_key, error FROM vitally.records WHERE run_id = {run} ORDER BY payload->'traits'->>'v'"), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let why = "sync key 'b' appears 2 times in the query's result: none of its rows is sent".to_string();
    assert_eq!(invalid, [("b".to_string(), why.clone()), ("b".to_string(), why)]);
    // full_resync counts every key: the identical repeat of 'a' is refused there.
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s', full_resync => true)");
    assert_eq!(run_figures(&mut db, run), (4, 0, 0, 4));
}

fn only_changed_or_failed_records_are_queued() {
    let mut db = fresh_database(cluster(), "plan_diff");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE acc (id int, plan text); INSERT INTO acc SELECT g, 'free' FROM generate_series(1, 10) g;
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM acc', 'id');",
    )
    .unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    assert_eq!(run_figures(&mut db, run), (10, 10, 0, 0));
    deliver_by_hand(&mut db, "s");

    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    assert_eq!(run_figures(&mut db, run), (10, 0, 10, 0));
    let status: String = scalar(&mut db, &format!("SELECT status FROM vitally.sync_runs WHERE id = {run}"));
    assert_eq!(status, "succeeded", "a run with nothing to send is finished at once");

    db.batch_execute("UPDATE acc SET plan = 'pro' WHERE id IN (3, 7)").unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    assert_eq!(run_figures(&mut db, run), (10, 2, 8, 0));
    let keys: Vec<String> = payloads(&mut db, "s").into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["3", "7"]);

    // A record whose delivery failed is queued again by the next run.
    db.batch_execute("UPDATE vitally.record SET status = 'failed', error = 'boom' WHERE sync_key = '3' AND status = 'pending'").unwrap();
    deliver_by_hand(&mut db, "s");
    let failed_now: i64 = scalar(&mut db, "SELECT failed_now FROM vitally.sync_status WHERE sync_name = 's'");
    assert_eq!(failed_now, 1);
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    assert_eq!(run_figures(&mut db, run), (10, 1, 9, 0));
    let failed_now: i64 = scalar(&mut db, "SELECT failed_now FROM vitally.sync_status WHERE sync_name = 's'");
    assert_eq!(failed_now, 0, "the failed record was queued again");

    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s', full_resync => true)");
    assert_eq!(run_figures(&mut db, run), (10, 9, 1, 0), "everything but the one already pending");
}

fn a_newer_change_replaces_the_pending_one() {
    let mut db = fresh_database(cluster(), "plan_replace");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE acc (id int, plan text); INSERT INTO acc VALUES (1, 'free');
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM acc', 'id');
         SELECT vitally.sync('s');",
    )
    .unwrap();
    let first: String = scalar(&mut db, "SELECT message_id::text FROM vitally.records WHERE status = 'pending'");
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    assert_eq!(run_figures(&mut db, run), (1, 0, 1, 0), "unchanged and already pending: not queued twice");
    db.batch_execute("UPDATE acc SET plan = 'pro'").unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    assert_eq!(run_figures(&mut db, run), (1, 1, 0, 0));
    let rows = db.query("SELECT payload->'traits'->>'plan', message_id::text, run_id FROM vitally.records WHERE sync_name = 's'", &[]).unwrap();
    assert_eq!(rows.len(), 1, "replaced, not added");
    assert_eq!(rows[0].get::<_, &str>(0), "pro");
    assert_ne!(rows[0].get::<_, String>(1), first, "a new change gets a new messageId");
    assert_eq!(rows[0].get::<_, i64>(2), run);
}

fn an_event_is_queued_once_ever() {
    let mut db = fresh_database(cluster(), "plan_events");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE ev (id int, event text, user_id text, plan text);
         INSERT INTO ev VALUES (1, 'Login', 'u1', 'free'), (2, 'Export', 'u2', 'pro');
         SELECT vitally.create_sync('e', 'd', 'event', 'append', 'SELECT * FROM ev', 'id');
         SELECT vitally.sync('e');",
    )
    .unwrap();
    let ids: Vec<String> =
        db.query("SELECT message_id::text FROM vitally.records ORDER BY sync_key", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    deliver_by_hand(&mut db, "e");
    db.batch_execute("UPDATE ev SET plan = 'changed'; INSERT INTO ev VALUES (3, 'Login', 'u1', 'free')").unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('e')");
    assert_eq!(run_figures(&mut db, run), (3, 1, 2, 0), "a changed event is not sent again");
    let (key, payload) = payloads(&mut db, "e").remove(0);
    assert_eq!(key, "3");
    assert_eq!(payload, json!({"event": "Login", "userId": "u1", "properties": {"plan": "free"}}));
    // An event's messageId is stable: the same destination, event name and key always give the same one.
    db.batch_execute("SELECT vitally.reset('e')").unwrap();
    db.batch_execute("DELETE FROM vitally.record").unwrap();
    db.batch_execute("SELECT vitally.sync('e')").unwrap();
    let again: Vec<String> = db
        .query("SELECT message_id::text FROM vitally.records WHERE sync_key IN ('1', '2') ORDER BY sync_key", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, again);
}

fn a_rollback_queues_nothing() {
    let mut db = fresh_database(cluster(), "plan_rollback");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE acc (id int); INSERT INTO acc VALUES (1), (2);
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM acc', 'id');
         BEGIN; SELECT vitally.sync('s'); ROLLBACK;",
    )
    .unwrap();
    let (runs, records): (i64, i64) = {
        let r = db.query_one("SELECT (SELECT count(*) FROM vitally.sync_runs), (SELECT count(*) FROM vitally.records)", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((runs, records), (0, 0));
}

fn preview_says_what_a_run_would_do() {
    let mut db = fresh_database(cluster(), "plan_preview");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE acc (id int, plan text); INSERT INTO acc VALUES (1, 'a'), (2, 'b');
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM acc ORDER BY id', 'id');
         SELECT vitally.sync('s');",
    )
    .unwrap();
    deliver_by_hand(&mut db, "s");
    db.batch_execute("UPDATE acc SET plan = 'changed' WHERE id = 2; INSERT INTO acc VALUES (NULL, 'c'), (4, 'd')").unwrap();
    let rows: Vec<(Option<String>, String)> =
        db.query("SELECT sync_key, action FROM vitally.preview('s', 10)", &[]).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut rows = rows;
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (None, "invalid".to_string()),
            (Some("1".into()), "unchanged".into()),
            (Some("2".into()), "create_or_update".into()),
            (Some("4".into()), "create_or_update".into()),
        ]
    );
    let queued: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.records WHERE status = 'pending'");
    assert_eq!(queued, 0, "preview queues nothing");
    let limited: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.preview('s', 1)");
    assert_eq!(limited, 1);
}

fn reset_makes_the_next_run_send_everything() {
    let mut db = fresh_database(cluster(), "plan_reset");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE acc (id int); INSERT INTO acc SELECT generate_series(1, 5);
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT * FROM acc', 'id');
         SELECT vitally.sync('s');",
    )
    .unwrap();
    deliver_by_hand(&mut db, "s");
    let forgotten: i64 = scalar(&mut db, "SELECT vitally.reset('s')");
    assert_eq!(forgotten, 5);
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('s')");
    assert_eq!(run_figures(&mut db, run), (5, 5, 0, 0));
}

fn a_million_rows_with_one_percent_changed_queue_exactly_those() {
    let mut db = fresh_database(cluster(), "plan_million");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE big AS SELECT g AS id, 'Account ' || g AS name, (g % 7) AS tier, now() AS seen FROM generate_series(1, 1000000) g;
         SELECT vitally.create_sync('big', 'd', 'account', 'upsert', 'SELECT id, name, tier, seen FROM big', 'id');",
    )
    .unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('big')");
    assert_eq!(run_figures(&mut db, run), (1_000_000, 1_000_000, 0, 0));
    deliver_by_hand(&mut db, "big");
    db.batch_execute("UPDATE big SET tier = tier + 100 WHERE id % 100 = 0").unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('big')");
    assert_eq!(run_figures(&mut db, run), (1_000_000, 10_000, 990_000, 0));
    let wrong: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.records WHERE status = 'pending' AND sync_key::bigint % 100 <> 0");
    assert_eq!(wrong, 0, "exactly the changed rows");
}

/// After the queue was emptied and vacuumed, its statistics say "no pages": a nested
/// loop that rescans it while rows are added made queueing 50,000 records take 20 s
/// instead of 1 (each rescan reads every page added so far). Counted in pages read,
/// not seconds. The planning settings also end with the call.
fn queueing_into_an_emptied_queue_reads_it_a_bounded_number_of_times() {
    let mut db = fresh_database(cluster(), "plan_emptied");
    destination(&mut db, "d");
    db.batch_execute(
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 50000) g;
         SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT id FROM t');
         SELECT vitally.sync('s');",
    )
    .unwrap();
    db.batch_execute("SELECT vitally.reset('s'); DELETE FROM vitally.record;").unwrap();
    db.batch_execute("VACUUM vitally.record").unwrap();
    let read = |db: &mut Client| -> i64 {
        db.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        scalar(db, "SELECT heap_blks_read + heap_blks_hit FROM pg_statio_all_tables WHERE relid = 'vitally.record'::regclass")
    };
    let mut observer = cluster().admin("plan_emptied");
    let before = read(&mut observer);
    let settings: (String, String) = {
        db.batch_execute("SELECT pg_stat_force_next_flush(); BEGIN; SELECT vitally.sync('s');").unwrap();
        let r = db.query_one("SELECT current_setting('work_mem'), current_setting('enable_nestloop')", &[]).unwrap();
        db.batch_execute("COMMIT").unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(settings, ("4MB".to_string(), "on".to_string()), "the caller's transaction keeps its own settings");
    let pages = eventually("the sync's I/O figures", Duration::from_secs(30), || {
        let after = read(&mut observer);
        (after > before).then_some(after - before)
    });
    assert_eq!(scalar::<i64>(&mut db, "SELECT count(*) FROM vitally.record WHERE status = 'pending'"), 50_000);
    assert!(pages < 500_000, "queueing 50,000 records read the queue's pages {pages} times");
}
