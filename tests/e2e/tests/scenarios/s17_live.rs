//! Live syncs (`vitally.watch`): a committed change to a watched table reaches Vitally
//! within seconds, without a schedule; only the keys it touched are planned, as the
//! sync's owner, through the same diff and queue as `vitally.sync()`.
//!
//! Most run in the shared cluster (`vitally.live_delay` 500 ms); the burst and the crash
//! need a longer delay, on clusters of their own.

use crate::{cluster, APP_DB};
use std::time::Duration;
use vitally_e2e::{emulator, emulator_destination, eventually, scalar, sql_error, sync_and_wait, Client, Cluster, Emulator, Faults};

crate::trials!("17_live":
    a_committed_change_reaches_vitally_within_seconds_and_an_unmapped_one_sends_nothing,
    a_change_to_a_joined_table_replans_the_users_it_gives,
    a_rolled_back_change_marks_nothing,
    a_deleted_or_truncated_row_sends_nothing,
    a_burst_of_changes_to_one_row_becomes_one_record_with_the_last_values,
    a_change_committed_just_before_a_crash_is_delivered_after_restart,
    an_append_sync_streams_each_new_event_once,
    the_restricted_query_reads_about_as_many_rows_as_changed,
    the_live_planner_runs_the_query_as_the_syncs_owner,
    watches_the_owner_could_not_keep_are_refused_with_how_to_fix_them,
    a_writers_settings_and_functions_never_reach_the_key_expression,
    a_failing_key_never_fails_the_writer_and_plans_every_key_instead,
    unwatch_stops_marking_and_a_full_sync_still_reconciles,
    a_new_key_reaches_sessions_that_marked_with_the_old_one,
    a_key_column_retyped_under_a_repeatable_read_writer_is_read_as_it_is_now,
);

fn app() -> Client {
    cluster().admin(APP_DB)
}

fn role(db: &mut Client, name: &str) {
    db.batch_execute(&format!("DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN; GRANT vitally_user TO {name}")).unwrap();
}

/// Marks of `sync` not planned yet.
fn marks(db: &mut Client, sync: &str) -> i64 {
    db.query_one("SELECT count(*) FROM vitally.change c JOIN vitally.sync s ON s.id = c.sync_id WHERE s.name = $1", &[&sync]).unwrap().get(0)
}

/// Waits until every mark of `sync` is planned and every record it queued is delivered
/// (the marks go in the transaction that queues their records, so no gap between).
fn settled(db: &mut Client, sync: &str) {
    eventually(&format!("sync {sync} to settle"), Duration::from_secs(60), || {
        let pending: i64 = db.query_one("SELECT count(*) FROM vitally.records WHERE sync_name = $1 AND status = 'pending'", &[&sync]).unwrap().get(0);
        (marks(db, sync) == 0 && pending == 0).then_some(())
    });
}

/// The trait `name` of the account `id` Vitally holds, once it equals `want`.
fn account_trait_becomes(vitally: &Emulator, id: &str, name: &str, want: serde_json::Value) {
    eventually(&format!("account {id} to have {name} = {want}"), Duration::from_secs(30), || {
        (vitally.object("accounts", id)?.traits.get(name)? == &want).then_some(())
    });
}

fn messages_for(vitally: &Emulator, field: &str, id: &str) -> Vec<serde_json::Value> {
    vitally.received().into_iter().filter(|r| r.body[field].as_str() == Some(id)).map(|r| r.body).collect()
}

/// An upsert account sync of `table` (integer ids, `name`, `seats`, an unmapped `note`),
/// watched, with `n` rows delivered by a first full sync when `delivered`.
fn watched_accounts(db: &mut Client, table: &str, vitally: &Emulator, n: i32, delivered: bool) {
    emulator_destination(db, table, vitally);
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, name text, seats int, note text);
         INSERT INTO {table} SELECT g, 'Account ' || g, g, '' FROM generate_series(1, {n}) g;
         SELECT vitally.create_sync('{table}', '{table}', 'account', 'upsert', 'SELECT id, name, seats FROM {table}', 'id');
         SELECT vitally.watch('{table}', '{table}');"
    ))
    .unwrap();
    if delivered {
        assert_eq!(sync_and_wait(db, table, 60), "succeeded");
    }
}

fn a_committed_change_reaches_vitally_within_seconds_and_an_unmapped_one_sends_nothing() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    watched_accounts(&mut db, "lv_acc", &vitally, 100, true);
    let before = vitally.counters().messages;
    assert_eq!(before, 100);

    // No vitally.sync(): the commit is enough.
    db.batch_execute("UPDATE lv_acc SET seats = 1000 WHERE id = 7; INSERT INTO lv_acc VALUES (101, 'New', 1, '')").unwrap();
    account_trait_becomes(&vitally, "7", "seats", 1000.into());
    account_trait_becomes(&vitally, "101", "seats", 1.into());
    settled(&mut db, "lv_acc");
    assert_eq!(vitally.counters().messages - before, 2, "only the two changed rows were sent");
    let live = db
        .query_one(
            "SELECT count(*), sum(records_queued)::int8, bool_and(status = 'succeeded') FROM vitally.sync_runs WHERE sync_name = 'lv_acc' AND live",
            &[],
        )
        .unwrap();
    assert_eq!(live.get::<_, i64>(1), 2, "the live run(s) queued the two records");
    assert!(live.get::<_, bool>(2), "and succeeded");
    let watch = db
        .query_one("SELECT table_name::text, key, pending_changes, last_change_at IS NOT NULL FROM vitally.watches WHERE sync_name = 'lv_acc'", &[])
        .unwrap();
    assert_eq!(
        (watch.get::<_, String>(0), watch.get::<_, String>(1), watch.get::<_, i64>(2), watch.get::<_, bool>(3)),
        ("lv_acc".into(), "id".into(), 0, true)
    );

    // A change to a column the query does not map is planned, and sends nothing.
    db.batch_execute("UPDATE lv_acc SET note = 'internal' WHERE id = 8").unwrap();
    assert_eq!(marks(&mut db, "lv_acc"), 1, "the commit marked the key");
    settled(&mut db, "lv_acc");
    assert_eq!(vitally.counters().messages - before, 2, "a row whose mapped values did not change sends nothing");
}

/// A users sync reads two tables; each is watched with the expression that gives the
/// user's id. Account ids are integers (any SQL type is an id).
fn a_change_to_a_joined_table_replans_the_users_it_gives() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    emulator_destination(&mut db, "lv_users", &vitally);
    db.batch_execute(
        "CREATE TABLE lv_people (id int PRIMARY KEY, email text);
         CREATE TABLE lv_members (user_id int, account_id int);
         CREATE INDEX ON lv_members (user_id);
         INSERT INTO lv_people VALUES (1, 'one@example.com'), (2, 'two@example.com'), (3, 'three@example.com');
         INSERT INTO lv_members VALUES (1, 10), (2, 10), (2, 11), (3, 12);
         SELECT vitally.create_sync('lv_users', 'lv_users', 'user', 'upsert',
                'SELECT p.id, p.email, array_agg(m.account_id ORDER BY m.account_id) AS account_ids
                   FROM lv_people p JOIN lv_members m ON m.user_id = p.id GROUP BY p.id, p.email', 'id');
         SELECT vitally.watch('lv_users', 'lv_people');
         SELECT vitally.watch('lv_users', 'public.lv_members', key => 'user_id');",
    )
    .unwrap();
    assert_eq!(sync_and_wait(&mut db, "lv_users", 60), "succeeded");
    assert_eq!(vitally.count("users"), 3);
    let before = vitally.counters().messages;

    db.batch_execute("INSERT INTO lv_members VALUES (1, 11)").unwrap();
    eventually("user 1 to be in accounts 10 and 11", Duration::from_secs(30), || {
        (vitally.object("users", "1")?.account_ids == ["10", "11"]).then_some(())
    });
    db.batch_execute("UPDATE lv_people SET email = 'deux@example.com' WHERE id = 2").unwrap();
    eventually("user 2's new email", Duration::from_secs(30), || {
        (vitally.object("users", "2")?.email.as_deref() == Some("deux@example.com")).then_some(())
    });
    settled(&mut db, "lv_users");
    // One message per (user, account): users 1 and 2, nobody else.
    let mut sent: Vec<String> =
        vitally.received()[before as usize..].iter().map(|r| format!("{}@{}", r.body["userId"], r.body["accountId"])).collect();
    sent.sort();
    assert_eq!(sent, ["\"1\"@\"10\"", "\"1\"@\"11\"", "\"2\"@\"10\"", "\"2\"@\"11\""]);
    let watched: String = scalar(
        &mut db,
        "SELECT string_agg(table_name::text || ' by ' || key, ', ' ORDER BY table_name::text) FROM vitally.watches WHERE sync_name = 'lv_users'",
    );
    assert_eq!(watched, "lv_members by user_id, lv_people by id");
}

fn a_rolled_back_change_marks_nothing() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    watched_accounts(&mut db, "lv_rb", &vitally, 10, true);
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("UPDATE lv_rb SET seats = -1 WHERE id = 1").unwrap();
    tx.rollback().unwrap();
    assert_eq!(marks(&mut db, "lv_rb"), 0, "a rollback leaves no mark");
    // A later commit is delivered; the rolled-back value never was.
    db.batch_execute("UPDATE lv_rb SET seats = 200 WHERE id = 2").unwrap();
    account_trait_becomes(&vitally, "2", "seats", 200.into());
    settled(&mut db, "lv_rb");
    let sent_for_1 = messages_for(&vitally, "accountId", "1");
    assert_eq!(sent_for_1.len(), 1, "account 1 was sent once, by the first sync");
    assert_eq!(sent_for_1[0]["traits"]["seats"], 1);
}

/// Vitally's Analytics API has no delete: a key the query no longer returns is planned
/// and sends nothing; Vitally keeps what it had.
fn a_deleted_or_truncated_row_sends_nothing() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    watched_accounts(&mut db, "lv_del", &vitally, 20, true);
    let before = vitally.counters().messages;
    db.batch_execute("DELETE FROM lv_del WHERE id = 5").unwrap();
    assert_eq!(marks(&mut db, "lv_del"), 1);
    settled(&mut db, "lv_del");
    // A TRUNCATE has no rows to read keys from: it marks the whole sync for a full plan.
    db.batch_execute("TRUNCATE lv_del").unwrap();
    let every: bool =
        scalar(&mut db, "SELECT bool_and(c.sync_key IS NULL) FROM vitally.change c JOIN vitally.sync s ON s.id = c.sync_id WHERE s.name = 'lv_del'");
    assert!(every, "a truncate marks every key");
    settled(&mut db, "lv_del");
    assert_eq!(vitally.counters().messages, before, "nothing was sent for rows that are gone");
    assert_eq!(vitally.count("accounts"), 20, "and Vitally keeps them");
    let runs: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.sync_runs WHERE sync_name = 'lv_del' AND live AND status = 'succeeded'");
    assert!(runs >= 2, "both changes were planned ({runs} live runs)");
}

/// A cluster of its own whose live planner waits `delay` after a change.
fn slow_cluster(name: &str, delay: &str) -> Cluster {
    Cluster::with_worker(name, &[&format!("vitally.live_delay = '{delay}'")])
}

fn a_burst_of_changes_to_one_row_becomes_one_record_with_the_last_values() {
    let c = slow_cluster("live-burst", "3s");
    let vitally = emulator(Faults::default());
    let mut db = c.admin("app");
    watched_accounts(&mut db, "burst", &vitally, 10, true);
    let before = vitally.counters().messages;
    for seats in 1..=20 {
        // Twenty transactions, each committed.
        db.batch_execute(&format!("UPDATE burst SET seats = {seats} WHERE id = 3")).unwrap();
    }
    account_trait_becomes(&vitally, "3", "seats", 20.into());
    settled(&mut db, "burst");
    assert_eq!(vitally.counters().messages - before, 1, "twenty commits, one record");
    let runs = db.query_one("SELECT count(*), sum(records_queued)::int8 FROM vitally.sync_runs WHERE sync_name = 'burst' AND live", &[]).unwrap();
    assert_eq!((runs.get::<_, i64>(0), runs.get::<_, i64>(1)), (1, 1), "one run for the window");
}

/// The marks are written in the writer's transaction: a commit the planner had not
/// reached when the server crashed is planned after the restart.
fn a_change_committed_just_before_a_crash_is_delivered_after_restart() {
    let c = slow_cluster("live-crash", "4s");
    let vitally = emulator(Faults::default());
    let mut db = c.admin("app");
    watched_accounts(&mut db, "crash", &vitally, 10, true);
    let before = vitally.counters().messages;
    db.batch_execute("UPDATE crash SET seats = 77 WHERE id = 4").unwrap();
    assert_eq!(marks(&mut db, "crash"), 1);
    c.kill9(c.postmaster_pid());
    assert_eq!(vitally.counters().messages, before, "the change was not sent before the crash");
    drop(db);
    c.start_again();
    account_trait_becomes(&vitally, "4", "seats", 77.into());
    let mut db = c.admin("app");
    settled(&mut db, "crash");
    assert_eq!(vitally.counters().messages - before, 1);
}

fn an_append_sync_streams_each_new_event_once() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    emulator_destination(&mut db, "lv_ev", &vitally);
    db.batch_execute(
        "CREATE TABLE lv_events (id bigint PRIMARY KEY, event text, user_id text, at timestamptz DEFAULT now());
         SELECT vitally.create_sync(name => 'lv_ev', destination => 'lv_ev', object => 'event',
                query => 'SELECT id, event, user_id, at AS timestamp FROM lv_events');
         SELECT vitally.watch('lv_ev', 'lv_events');",
    )
    .unwrap();
    db.batch_execute("INSERT INTO lv_events (id, event, user_id) VALUES (1, 'Login', 'u1'), (2, 'Login', 'u2'), (3, 'Export', 'u1')").unwrap();
    eventually("three events", Duration::from_secs(30), || (vitally.counters().messages == 3).then_some(()));
    db.batch_execute("UPDATE lv_events SET event = 'Renamed' WHERE id = 1").unwrap();
    db.batch_execute("INSERT INTO lv_events (id, event, user_id) VALUES (4, 'Logout', 'u2')").unwrap();
    eventually("the fourth event", Duration::from_secs(30), || (vitally.counters().messages >= 4).then_some(()));
    settled(&mut db, "lv_ev");
    let events: Vec<String> = vitally.received().iter().map(|r| r.body["event"].as_str().unwrap_or("?").to_string()).collect();
    assert_eq!(events.len(), 4, "each event once, a changed one not again: {events:?}");
    assert!(!events.contains(&"Renamed".to_string()));
}

/// Rows of `table` read by every scan so far, as the statistics say.
fn rows_read(db: &mut Client, table: &str) -> (i64, i64) {
    db.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    let row = db
        .query_one(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0), coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relid = $1::text::regclass",
            &[&table],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// The restricted query is the sync's query with `key = ANY(changed keys)` around it:
/// on an indexed key it reads the changed rows, not the table.
fn the_restricted_query_reads_about_as_many_rows_as_changed() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    role(&mut db, "lv_big_owner");
    db.batch_execute(
        "CREATE TABLE lv_big (id int PRIMARY KEY, name text, seats int);
         INSERT INTO lv_big SELECT g, 'Account ' || g, g FROM generate_series(1, 50000) g;
         ANALYZE lv_big;
         GRANT SELECT, UPDATE, TRIGGER ON lv_big TO lv_big_owner;",
    )
    .unwrap();
    let mut owner = cluster().connect(APP_DB, "lv_big_owner");
    emulator_destination(&mut owner, "lv_big", &vitally);
    owner
        .batch_execute(
            "SELECT vitally.create_sync('lv_big', 'lv_big', 'account', 'upsert', 'SELECT id, name, seats FROM lv_big', 'id');
             SELECT vitally.watch('lv_big', 'lv_big');",
        )
        .unwrap();
    db.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
    let (read_before, scans_before) = rows_read(&mut db, "lv_big");
    db.batch_execute("UPDATE lv_big SET seats = seats + 1 WHERE id BETWEEN 1 AND 100").unwrap();
    db.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
    eventually("100 accounts delivered", Duration::from_secs(60), || (vitally.count("accounts") == 100).then_some(()));
    settled(&mut db, "lv_big");
    // The planner reports its statistics when it stops, a few idle seconds later.
    eventually("the planner to stop", Duration::from_secs(30), || {
        let n: i64 =
            scalar(&mut db, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'vitally_sync live planner' AND usename = 'lv_big_owner'");
        (n == 0).then_some(())
    });
    let (read_after, scans_after) = rows_read(&mut db, "lv_big");
    let read = read_after - read_before;
    // The UPDATE itself read 100 rows; the plan about as many again.
    assert!((200..1000).contains(&read), "{read} rows of a 50,000-row table were read for 100 changes");
    assert!(scans_after - scans_before >= 2, "the plan used the index on the key");

    // What explain_live says of it, and of the same sync over a copy with no index.
    let verdict: String = scalar(&mut owner, "SELECT vitally.explain_live('lv_big') LIMIT 1");
    assert_eq!(verdict, "for 100 changed keys the query reads by key: a change costs about the rows it changed");
    db.batch_execute("CREATE TABLE lv_big_noidx AS SELECT * FROM lv_big; ANALYZE lv_big_noidx; GRANT SELECT ON lv_big_noidx TO lv_big_owner")
        .unwrap();
    owner
        .batch_execute("SELECT vitally.create_sync('lv_noidx', 'lv_big', 'account', 'upsert', 'SELECT id, name, seats FROM lv_big_noidx', 'id')")
        .unwrap();
    let verdict: String = scalar(&mut owner, "SELECT vitally.explain_live('lv_noidx', keys => ARRAY['1', '2']) LIMIT 1");
    assert!(verdict.starts_with("for 2 changed keys the query still reads whole: lv_big_noidx; index the source column"), "{verdict}");
    let err = sql_error(owner.batch_execute("SELECT vitally.explain_live('lv_noidx')"));
    assert_eq!(err.message, "sync \"lv_noidx\" has delivered nothing yet, so there are no keys to explain with");
}

fn the_live_planner_runs_the_query_as_the_syncs_owner() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    role(&mut db, "lv_olga");
    db.batch_execute("CREATE TABLE lv_who (id text PRIMARY KEY); GRANT SELECT, INSERT, TRIGGER ON lv_who TO lv_olga").unwrap();
    let mut olga = cluster().connect(APP_DB, "lv_olga");
    emulator_destination(&mut olga, "lv_who", &vitally);
    olga.batch_execute(
        "SELECT vitally.create_sync('lv_who', 'lv_who', 'account', 'upsert',
                'SELECT id, current_user AS ran_as, session_user AS session_as,
                        pg_catalog.pg_has_role(session_user, ''pg_read_server_files'', ''USAGE'') AS reads_files FROM lv_who', 'id');
         SELECT vitally.watch('lv_who', 'lv_who');",
    )
    .unwrap();
    // Written by the superuser: the plan still runs as olga, in a session of olga's.
    db.batch_execute("INSERT INTO lv_who VALUES ('w1')").unwrap();
    eventually("w1 delivered", Duration::from_secs(30), || vitally.object("accounts", "w1"));
    let traits = vitally.object("accounts", "w1").unwrap().traits;
    assert_eq!((&traits["ran_as"], &traits["session_as"], &traits["reads_files"]), (&"lv_olga".into(), &"lv_olga".into(), &false.into()));
}

fn watches_the_owner_could_not_keep_are_refused_with_how_to_fix_them() {
    let mut db = app();
    role(&mut db, "lv_carol");
    db.batch_execute(
        "DROP ROLE IF EXISTS lv_nologin; CREATE ROLE lv_nologin NOLOGIN; GRANT vitally_user TO lv_nologin;
         CREATE TABLE lv_open (id int PRIMARY KEY, email text); GRANT SELECT, TRIGGER ON lv_open TO lv_carol, lv_nologin;
         CREATE TABLE lv_secret (id int PRIMARY KEY);
         CREATE TABLE lv_read_only (id int PRIMARY KEY); GRANT SELECT ON lv_read_only TO lv_carol;
         CREATE VIEW lv_open_view AS SELECT * FROM lv_open; GRANT SELECT ON lv_open_view TO lv_carol;",
    )
    .unwrap();
    let mut carol = cluster().connect(APP_DB, "lv_carol");
    carol
        .batch_execute(
            "SELECT vitally.create_destination('lv_carol', analytics_api_key => 'k', analytics_url => 'http://127.0.0.1:9/a');
             SELECT vitally.create_sync('lv_carol', 'lv_carol', 'account', 'upsert', 'SELECT id, email FROM lv_open', 'id');",
        )
        .unwrap();
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        (
            "SELECT vitally.watch('lv_carol', 'lv_secret')",
            "42501",
            "the sync's owner lv_carol may not read table public.lv_secret",
            Some("GRANT SELECT ON public.lv_secret TO lv_carol;"),
        ),
        (
            "SELECT vitally.watch('lv_carol', 'lv_read_only')",
            "42501",
            "the sync's owner lv_carol may not add triggers to table public.lv_read_only",
            Some("GRANT TRIGGER ON public.lv_read_only TO lv_carol;"),
        ),
        ("SELECT vitally.watch('lv_carol', 'lv_open_view')", "42809", "\"public.lv_open_view\" is not a table: only tables can be watched", None),
        ("SELECT vitally.watch('lv_carol', 'lv_opne')", "42P01", "table \"lv_opne\" does not exist", None),
        ("SELECT vitally.watch('lv_carol', 'lv_open', key => 'account_id')", "22023", "column \"account_id\" does not exist", None),
        (
            "SELECT vitally.watch('lv_carol', 'lv_open', key => 'id) AS k FROM lv_open; DROP TABLE lv_open; SELECT (1')",
            "22023",
            "the key of the watch on public.lv_open is not one expression over its rows: it closes a parenthesis it did not open",
            None,
        ),
        ("SELECT vitally.watch('lv_carol', 'lv_open', key => 'lower(email')", "22023", "syntax error at end of input", None),
        ("SELECT vitally.watch('lv_carol', 'lv_open', key => 'id), (1')", "22023", "it closes a parenthesis it did not open", None),
        (
            "SELECT vitally.watch('lv_carol', 'lv_open', key => 'id) FROM lv_open UNION SELECT (1')",
            "22023",
            "it closes a parenthesis it did not open",
            None,
        ),
        ("SELECT vitally.watch('lv_carol', 'lv_open', key => '')", "22023", "or is empty", None),
        ("SELECT vitally.watch('lv_nope', 'lv_open')", "42704", "sync \"lv_nope\" does not exist", None),
    ];
    for (sql, code, message, hint) in cases {
        let err = sql_error(carol.batch_execute(sql));
        assert_eq!(err.code, *code, "{sql}: {}", err.message);
        assert!(err.message.contains(message), "{sql}: {}", err.message);
        if let Some(hint) = hint {
            assert!(err.hint.as_deref().unwrap_or_default().starts_with(hint), "{sql}: {:?}", err.hint);
        }
    }
    // Another role's sync is not there to watch, even for a role that may write the table.
    db.batch_execute(
        "SELECT vitally.create_destination('lv_admin', analytics_api_key => 'k', analytics_url => 'http://127.0.0.1:9/a');
                      SELECT vitally.create_sync('lv_admins', 'lv_admin', 'account', 'upsert', 'SELECT id FROM lv_open', 'id')",
    )
    .unwrap();
    let err = sql_error(carol.batch_execute("SELECT vitally.watch('lv_admins', 'lv_open')"));
    assert_eq!(err.message, "sync \"lv_admins\" does not exist");
    // An owner that cannot log in: live planning connects as the owner.
    db.batch_execute(
        "SET ROLE lv_nologin;
         SELECT vitally.create_destination('lv_nl', analytics_api_key => 'k', analytics_url => 'http://127.0.0.1:9/a');
         SELECT vitally.create_sync('lv_nl', 'lv_nl', 'account', 'upsert', 'SELECT id FROM lv_open', 'id');",
    )
    .unwrap();
    let err = sql_error(db.batch_execute("SELECT vitally.watch('lv_nl', 'lv_open')"));
    assert_eq!(err.message, "the sync's owner lv_nologin cannot log in, and live planning connects as that role");
    assert_eq!(err.hint.as_deref(), Some("ALTER ROLE lv_nologin LOGIN; or have a role that can log in own the sync."));
    db.batch_execute("RESET ROLE").unwrap();

    // Nothing was left behind by any refusal.
    let exists: bool = scalar(&mut db, "SELECT to_regclass('lv_open') IS NOT NULL");
    assert!(exists);
    let triggers: i64 =
        scalar(&mut db, "SELECT count(*) FROM pg_trigger WHERE tgrelid IN ('lv_open'::regclass, 'lv_secret'::regclass, 'lv_read_only'::regclass)");
    let watches: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.watches WHERE sync_name IN ('lv_carol', 'lv_nl', 'lv_admins')");
    assert_eq!((triggers, watches), (0, 0));
}

/// The key expression runs in the writer's transaction, as the sync's owner. A writer's
/// search_path (a look-alike `lower()`) and `standard_conforming_strings` never change
/// what it means: it is read with the search_path `watch()` recorded, settings pinned.
fn a_writers_settings_and_functions_never_reach_the_key_expression() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    role(&mut db, "lv_alice");
    role(&mut db, "lv_mallory");
    db.batch_execute(
        "DROP SCHEMA IF EXISTS lv_mallory CASCADE; CREATE SCHEMA lv_mallory AUTHORIZATION lv_mallory;
         CREATE TABLE lv_emails (email text PRIMARY KEY, name text);
         INSERT INTO lv_emails VALUES ('Ann@Example.com', 'Ann'), ('it''s\\me@example.com', 'Quote');
         GRANT SELECT, TRIGGER ON lv_emails TO lv_alice; GRANT SELECT, UPDATE ON lv_emails TO lv_mallory;",
    )
    .unwrap();
    let mut alice = cluster().connect(APP_DB, "lv_alice");
    emulator_destination(&mut alice, "lv_emails", &vitally);
    alice
        .batch_execute(
            "SELECT vitally.create_sync('lv_emails', 'lv_emails', 'account', 'upsert', 'SELECT lower(email) AS id, name FROM lv_emails', 'id');
             SELECT vitally.watch('lv_emails', 'lv_emails', key => 'lower(email)');",
        )
        .unwrap();
    let mut mallory = cluster().connect(APP_DB, "lv_mallory");
    mallory
        .batch_execute(
            "CREATE TABLE lv_mallory.seen (who text);
             GRANT INSERT ON lv_mallory.seen TO PUBLIC; GRANT USAGE ON SCHEMA lv_mallory TO PUBLIC;
             CREATE FUNCTION lv_mallory.lower(text) RETURNS text LANGUAGE sql
                 AS $$ INSERT INTO lv_mallory.seen VALUES (current_user) RETURNING 'x' $$;
             SET search_path = lv_mallory, pg_catalog, public;
             SET standard_conforming_strings = off;
             UPDATE public.lv_emails SET name = 'Ann B' WHERE email = 'Ann@Example.com';
             UPDATE public.lv_emails SET name = 'Quote B' WHERE name = 'Quote';",
        )
        .unwrap();
    let keys: Vec<String> = db
        .query("SELECT c.sync_key FROM vitally.change c JOIN vitally.sync s ON s.id = c.sync_id WHERE s.name = 'lv_emails' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // (The planner may already have taken some.)
    for k in &keys {
        assert!(["ann@example.com", "it's\\me@example.com"].contains(&k.as_str()), "mark {k:?}");
    }
    account_trait_becomes(&vitally, "ann@example.com", "name", "Ann B".into());
    account_trait_becomes(&vitally, "it's\\me@example.com", "name", "Quote B".into());
    let seen: i64 = scalar(&mut db, "SELECT count(*) FROM lv_mallory.seen");
    assert_eq!(seen, 0, "the writer's lower() was never called");

    // Nor can a trigger of mallory's own borrow alice's watch, to run alice's key as
    // alice over rows mallory makes up: she may not name the function...
    let watch: i64 = scalar(&mut db, "SELECT w.id FROM vitally.watch w JOIN vitally.sync s ON s.id = w.sync_id WHERE s.name = 'lv_emails'");
    mallory.batch_execute("RESET search_path; CREATE TABLE lv_mallory.fake (email text)").unwrap();
    let borrow = format!(
        "CREATE TRIGGER borrow AFTER INSERT ON lv_mallory.fake REFERENCING NEW TABLE AS vitally_new FOR EACH STATEMENT EXECUTE FUNCTION vitally.watch_trigger('{watch}')"
    );
    let err = sql_error(mallory.batch_execute(&borrow));
    assert_eq!((err.code.as_str(), err.message.as_str()), ("42501", "permission denied for function vitally.watch_trigger"));
    // ...and one a superuser made for her refuses to mark anything.
    db.batch_execute(&borrow).unwrap();
    let err = sql_error(mallory.batch_execute("INSERT INTO lv_mallory.fake VALUES ('Bob@Example.com')"));
    assert!(err.message.contains("only for the triggers vitally.watch() creates"), "{}", err.message);
    assert_eq!(marks(&mut db, "lv_emails"), 0);
}

/// A key expression that fails on a row (here: division by zero when seats is 0) never
/// fails the writer's statement: a WARNING says why, and the sync is marked for a plan
/// of every key, which delivers the change.
fn a_failing_key_never_fails_the_writer_and_plans_every_key_instead() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    emulator_destination(&mut db, "lv_fail", &vitally);
    db.batch_execute(
        "CREATE TABLE lv_fail (id int PRIMARY KEY, seats int);
         INSERT INTO lv_fail VALUES (1, 1), (2, 2);
         SELECT vitally.create_sync('lv_fail', 'lv_fail', 'account', 'upsert', 'SELECT id, seats FROM lv_fail', 'id');
         SELECT vitally.watch('lv_fail', 'lv_fail', key => 'id * seats / seats');",
    )
    .unwrap();
    let (mut writer, notices) = cluster().connect_with_notices(APP_DB, "postgres");
    writer.batch_execute("UPDATE lv_fail SET seats = 0 WHERE id = 2").unwrap();
    let warned = notices.lock().unwrap().clone();
    assert!(warned.iter().any(|n| n.contains("lv_fail") && n.contains("division by zero")), "the writer was told why: {warned:?}");
    eventually("account 2 delivered with no seats", Duration::from_secs(30), || {
        (vitally.object("accounts", "2")?.traits["seats"] == 0).then_some(())
    });
    assert!(vitally.object("accounts", "1").is_some(), "every key was planned");
}

fn unwatch_stops_marking_and_a_full_sync_still_reconciles() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    watched_accounts(&mut db, "lv_un", &vitally, 5, true);
    let triggers: i64 = scalar(&mut db, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'lv_un'::regclass");
    assert_eq!(triggers, 4, "insert, update, delete and truncate");
    let unwatched: bool = scalar(&mut db, "SELECT vitally.unwatch('lv_un', 'lv_un')");
    assert!(unwatched);
    let triggers: i64 = scalar(&mut db, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'lv_un'::regclass");
    assert_eq!(triggers, 0, "unwatch drops its triggers");
    let err = sql_error(db.batch_execute("SELECT vitally.unwatch('lv_un', 'lv_un')"));
    assert_eq!((err.code.as_str(), err.message.as_str()), ("42704", "sync \"lv_un\" does not watch table public.lv_un"));

    db.batch_execute("UPDATE lv_un SET seats = 55 WHERE id = 1").unwrap();
    assert_eq!(marks(&mut db, "lv_un"), 0, "an unwatched table marks nothing");
    let before = vitally.counters().messages;
    assert_eq!(sync_and_wait(&mut db, "lv_un", 60), "succeeded");
    assert_eq!(vitally.counters().messages - before, 1, "vitally.sync() finds what no watch saw");
    assert_eq!(vitally.object("accounts", "1").unwrap().traits["seats"], 55);

    // A watched table dropped takes its triggers; unwatch() by its old name takes the watch.
    db.batch_execute("CREATE TABLE lv_un_extra (id int); SELECT vitally.watch('lv_un', 'lv_un_extra'); DROP TABLE lv_un_extra").unwrap();
    let unwatched: bool = scalar(&mut db, "SELECT vitally.unwatch('lv_un', 'lv_un_extra')");
    assert!(unwatched);
    let left: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.watches WHERE sync_name = 'lv_un'");
    assert_eq!(left, 0);
    let err = sql_error(db.batch_execute("SELECT vitally.unwatch('lv_un', 'lv_un_extra')"));
    assert_eq!(err.message, "table \"lv_un_extra\" does not exist");
}

/// Sessions keep the watches their statements marked for; `watch()` with a new key
/// tells them all to read it again. (The sync is paused so the marks stay to be read.)
fn a_new_key_reaches_sessions_that_marked_with_the_old_one() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    watched_accounts(&mut db, "lv_rekey", &vitally, 3, false);
    // Alone in its transaction: it locks the sync, a write before any other.
    db.execute("SELECT vitally.alter_sync('lv_rekey', enabled => false)", &[]).unwrap();
    let mut writer = cluster().connect(APP_DB, "postgres");
    let keys = |db: &mut Client| -> Vec<String> {
        db.query(
            "SELECT c.sync_key FROM vitally.change c JOIN vitally.sync s ON s.id = c.sync_id WHERE s.name = 'lv_rekey' ORDER BY c.changed_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    writer.batch_execute("UPDATE lv_rekey SET seats = 10 WHERE id = 1").unwrap();
    assert_eq!(keys(&mut db), ["1"]);
    db.batch_execute("SELECT vitally.watch('lv_rekey', 'lv_rekey', key => 'id + 100')").unwrap();
    writer.batch_execute("UPDATE lv_rekey SET seats = 20 WHERE id = 2").unwrap();
    assert_eq!(keys(&mut db), ["1", "102"], "the writer's session read the new key");
    let key: String = scalar(&mut db, "SELECT key FROM vitally.watches WHERE sync_name = 'lv_rekey'");
    assert_eq!(key, "id + 100");
}

/// The key column is found in the table as the statement sees it, never as a cached or
/// older snapshot of the catalog says: here a REPEATABLE READ writer whose snapshot
/// predates an ALTER TABLE that made the text key a bigint (read as text, that crashed
/// the server).
fn a_key_column_retyped_under_a_repeatable_read_writer_is_read_as_it_is_now() {
    let vitally = emulator(Faults::default());
    let mut db = app();
    emulator_destination(&mut db, "lv_retype", &vitally);
    db.batch_execute(
        "CREATE TABLE lv_retype (code text PRIMARY KEY, seats int);
         INSERT INTO lv_retype VALUES ('1', 1);
         SELECT vitally.create_sync('lv_retype', 'lv_retype', 'account', 'upsert', 'SELECT code AS id, seats FROM lv_retype', 'id');
         SELECT vitally.watch('lv_retype', 'lv_retype', key => 'code');",
    )
    .unwrap();
    db.execute("SELECT vitally.alter_sync('lv_retype', enabled => false)", &[]).unwrap();
    let mut writer = cluster().connect(APP_DB, "postgres");
    writer.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM vitally.watch").unwrap();
    db.batch_execute("ALTER TABLE lv_retype ALTER code TYPE bigint USING code::bigint").unwrap();
    writer.batch_execute("INSERT INTO lv_retype VALUES (12345, 2); COMMIT").unwrap();
    let keys: Vec<String> = db
        .query("SELECT c.sync_key FROM vitally.change c JOIN vitally.sync s ON s.id = c.sync_id WHERE s.name = 'lv_retype'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["12345"]);
}
