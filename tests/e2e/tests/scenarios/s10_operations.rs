//! Running it for a year: upgrades, scheduling with pg_cron, retention, monitoring,
//! backups.

use crate::{cluster, APP_DB};
use std::time::Duration;
use vitally_e2e::{deliver_by_hand, records_queued, Cluster};
use vitally_e2e::{destination, emulator, emulator_destination, eventually, fresh_database, scalar, sql_error, sync_and_wait, Client, Faults};

crate::trials!("10_operations":
    upgrade_from_each_released_version_equals_a_fresh_install,
    a_scheduled_sync_runs_from_pg_cron_as_its_owner,
    scheduling_without_pg_cron_says_how_to_get_it,
    overlapping_runs_of_one_sync_queue_a_change_once,
    retention_removes_old_history_and_keeps_failed_and_pending_records,
    metrics_count_what_vitally_answered_per_destination,
    a_long_sync_reports_progress_and_a_quick_one_is_quiet,
    a_dump_restored_into_a_new_cluster_delivers_only_what_changed,
    the_worker_waits_for_alter_extension_update_and_the_update_finishes_stuck_runs,
);

/// Every object of the extension as text: tables with their columns, constraints,
/// indexes and options, views, functions, privileges, and what pg_dump keeps. Two
/// databases with the same description have the same schema.
fn describe_extension(db: &mut Client) -> Vec<String> {
    let rows = db
        .query(
            "WITH ext AS (SELECT oid, extconfig, extcondition FROM pg_extension WHERE extname = 'vitally_sync'),
                  members AS (SELECT d.classid, d.objid FROM pg_depend d, ext
                               WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e')
             SELECT 'relation ' || c.oid::regclass::text || ' ' || c.relkind::text || ' ' || coalesce(c.reloptions::text, '')
                    || ' acl ' || coalesce(c.relacl::text, '')
               FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
             UNION ALL
             SELECT 'column ' || a.attrelid::regclass || '.' || a.attnum || ' ' || a.attname || ' '
                    || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                    || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
               FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
             UNION ALL
             SELECT 'constraint ' || co.conrelid::regclass || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
               FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace WHERE n.nspname = 'vitally'
             UNION ALL
             SELECT 'index ' || pg_get_indexdef(i.indexrelid)
               FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'vitally'
             UNION ALL
             SELECT 'view ' || c.oid::regclass || ' ' || pg_get_viewdef(c.oid)
               FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid WHERE c.relkind = 'v'
             UNION ALL
             SELECT 'function ' || pg_get_functiondef(p.oid) || ' acl ' || coalesce(p.proacl::text, '')
               FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
             UNION ALL
             SELECT 'schema ' || n.nspname || ' acl ' || coalesce(n.nspacl::text, '') FROM pg_namespace n WHERE n.nspname = 'vitally'
             UNION ALL
             SELECT 'dumped ' || cfg::regclass || ' ' || coalesce(cond, '')
               FROM ext, unnest(ext.extconfig, ext.extcondition) AS u(cfg, cond)
             ORDER BY 1",
            &[],
        )
        .unwrap();
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

fn upgrade_from_each_released_version_equals_a_fresh_install() {
    let released: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../sql/releases"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("vitally_sync--")?.strip_suffix(".sql").map(str::to_string)
        })
        .collect();
    assert!(!released.is_empty(), "sql/releases holds the released install scripts");
    let mut fresh = fresh_database(cluster(), "upgrade_fresh");
    let current: String = fresh.query_one("SELECT extversion FROM pg_extension WHERE extname = 'vitally_sync'", &[]).unwrap().get(0);
    let expected = describe_extension(&mut fresh);
    assert!(expected.len() > 50, "the description covers the schema: {expected:?}");
    for version in released {
        let mut admin = cluster().admin("postgres");
        admin.batch_execute("DROP DATABASE IF EXISTS upgrade_old").unwrap();
        admin.batch_execute("CREATE DATABASE upgrade_old").unwrap();
        let mut db = cluster().admin("upgrade_old");
        db.batch_execute(&format!("CREATE EXTENSION vitally_sync VERSION '{version}'")).unwrap();
        // Configuration made under the old version survives the upgrade.
        db.batch_execute(
            "SELECT vitally.create_destination('kept', analytics_api_key => 'k', analytics_url => 'http://127.0.0.1:9/a');
             CREATE TABLE t AS SELECT 1 AS id;
             SELECT vitally.create_sync('kept', 'kept', 'account', 'upsert', 'SELECT id FROM t')",
        )
        .unwrap();
        db.batch_execute("ALTER EXTENSION vitally_sync UPDATE").unwrap();
        let now: String = db.query_one("SELECT extversion FROM pg_extension WHERE extname = 'vitally_sync'", &[]).unwrap().get(0);
        assert_eq!(now, current, "ALTER EXTENSION UPDATE from {version} reaches the current version");
        let got = describe_extension(&mut db);
        let missing: Vec<&String> = expected.iter().filter(|l| !got.contains(l)).collect();
        let extra: Vec<&String> = got.iter().filter(|l| !expected.contains(l)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "upgrade from {version} differs from a fresh install:\nmissing {missing:#?}\nextra {extra:#?}"
        );
        let syncs: i64 = db.query_one("SELECT count(*) FROM vitally.syncs WHERE name = 'kept'", &[]).unwrap().get(0);
        assert_eq!(syncs, 1);
        drop(db);
        admin.batch_execute("DROP DATABASE upgrade_old").unwrap();
    }
}

fn a_scheduled_sync_runs_from_pg_cron_as_its_owner() {
    let mut admin = cluster().admin(APP_DB);
    admin
        .batch_execute(
            "CREATE ROLE op_cron LOGIN; GRANT vitally_user TO op_cron;
             CREATE TABLE op_cron_accounts AS SELECT g AS id, 'account ' || g AS name FROM generate_series(1, 3) g;
             GRANT SELECT ON op_cron_accounts TO op_cron;",
        )
        .unwrap();
    let mut owner = cluster().connect(APP_DB, "op_cron");
    destination(&mut owner, "op_cron_d");
    owner.batch_execute("SELECT vitally.create_sync('op_cron_s', 'op_cron_d', 'account', 'upsert', 'SELECT * FROM op_cron_accounts')").unwrap();
    let job: i64 = scalar(&mut owner, "SELECT vitally.schedule('op_cron_s', '* * * * *')");
    let row = admin.query_one("SELECT jobname::text, schedule, command, username::text, database FROM cron.job WHERE jobid = $1", &[&job]).unwrap();
    assert_eq!(row.get::<_, String>(0), "vitally:op_cron_s");
    assert_eq!(row.get::<_, String>(1), "* * * * *");
    assert_eq!(row.get::<_, String>(2), "SELECT vitally.sync('op_cron_s')");
    assert_eq!(row.get::<_, String>(3), "op_cron", "the job runs as the sync's owner");
    assert_eq!(row.get::<_, String>(4), APP_DB);
    // Scheduling again changes the schedule of the same job.
    let again: i64 = scalar(&mut owner, "SELECT vitally.schedule('op_cron_s', '* * * * *')");
    assert_eq!(again, job);
    let err = sql_error(owner.batch_execute("SELECT vitally.schedule('op_cron_s', 'every tuesday')"));
    assert!(err.message.contains("invalid schedule"), "{}", err.message);

    // pg_cron fires at the next minute.
    let queued: i64 = eventually("pg_cron to run the sync", Duration::from_secs(90), || {
        owner.query_opt("SELECT records_queued FROM vitally.sync_runs WHERE sync_name = 'op_cron_s'", &[]).unwrap().map(|r| r.get(0))
    });
    assert_eq!(queued, 3);
    // pg_cron records the job's end after its transaction commits: a moment later.
    let status: String = eventually("pg_cron to record the run's end", Duration::from_secs(30), || {
        let s: String = scalar(&mut admin, &format!("SELECT status FROM cron.job_run_details WHERE jobid = {job} ORDER BY runid LIMIT 1"));
        (s != "running").then_some(s)
    });
    assert_eq!(status, "succeeded");

    assert!(scalar::<bool>(&mut owner, "SELECT vitally.unschedule('op_cron_s')"));
    assert!(!scalar::<bool>(&mut owner, "SELECT vitally.unschedule('op_cron_s')"), "nothing left to unschedule");
    assert_eq!(scalar::<i64>(&mut admin, "SELECT count(*) FROM cron.job WHERE jobname = 'vitally:op_cron_s'"), 0);

    // Another role cannot schedule a sync it does not own; dropping a sync drops its job.
    admin.batch_execute("CREATE ROLE op_cron_other LOGIN; GRANT vitally_user TO op_cron_other").unwrap();
    let mut other = cluster().connect(APP_DB, "op_cron_other");
    let err = sql_error(other.batch_execute("SELECT vitally.schedule('op_cron_s', '0 * * * *')"));
    assert_eq!((err.code.as_str(), err.message.as_str()), ("42704", "sync \"op_cron_s\" does not exist"));
    owner.batch_execute("SELECT vitally.schedule('op_cron_s', '0 3 * * *'); SELECT vitally.drop_sync('op_cron_s')").unwrap();
    assert_eq!(scalar::<i64>(&mut admin, "SELECT count(*) FROM cron.job WHERE jobname = 'vitally:op_cron_s'"), 0);
}

fn scheduling_without_pg_cron_says_how_to_get_it() {
    let mut db = fresh_database(cluster(), "op_nocron");
    destination(&mut db, "d");
    db.batch_execute("SELECT vitally.create_sync('s', 'd', 'account', 'upsert', 'SELECT 1 AS id')").unwrap();
    let err = sql_error(db.batch_execute("SELECT vitally.schedule('s', '*/15 * * * *')"));
    assert_eq!(err.code, "0A000");
    assert_eq!(err.message, "pg_cron is not installed in database \"op_nocron\"");
    assert!(err.hint.unwrap().contains("shared_preload_libraries"));
    let err = sql_error(db.batch_execute("SELECT vitally.unschedule('s')"));
    assert_eq!(err.code, "0A000");
    // Dropping a sync works without pg_cron.
    db.batch_execute("SELECT vitally.drop_sync('s')").unwrap();
}

/// pg_cron firing while a manual run is still planning: the second run waits for the
/// first to commit, then finds its records pending and unchanged.
fn overlapping_runs_of_one_sync_queue_a_change_once() {
    let mut admin = cluster().admin(APP_DB);
    destination(&mut admin, "op_overlap_d");
    admin
        .batch_execute(
            "CREATE TABLE op_overlap AS SELECT g AS id, g * 10 AS mrr FROM generate_series(1, 50) g;
             SELECT vitally.create_sync('op_overlap_s', 'op_overlap_d', 'account', 'upsert', 'SELECT * FROM op_overlap')",
        )
        .unwrap();
    let mut first = cluster().admin(APP_DB);
    first.batch_execute("BEGIN; SELECT vitally.sync('op_overlap_s')").unwrap();
    let second = std::thread::spawn(|| {
        let mut db = cluster().admin(APP_DB);
        db.query_one("SELECT vitally.sync('op_overlap_s')", &[]).unwrap().get::<_, i64>(0)
    });
    eventually("the second run to wait for the first", Duration::from_secs(10), || {
        let waiting: i64 = scalar(&mut admin, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%op_overlap_s%'");
        (waiting == 1).then_some(())
    });
    first.batch_execute("COMMIT").unwrap();
    let run = second.join().unwrap();
    let row = admin.query_one("SELECT records_queued, records_unchanged FROM vitally.sync_run WHERE id = $1", &[&run]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 50), "the second run queues nothing again");
    let copies: i64 = scalar(&mut admin, "SELECT count(*) FROM vitally.records WHERE sync_name = 'op_overlap_s'");
    assert_eq!(copies, 50, "one record per row");
    admin.batch_execute("SELECT vitally.drop_sync('op_overlap_s')").unwrap();
}

/// On a cluster of its own: retention finds old records by id (ids follow queueing
/// time), which records made old by hand in a shared database would not.
fn retention_removes_old_history_and_keeps_failed_and_pending_records() {
    let own = Cluster::with_worker("retention", &[]);
    let mut db = own.admin("app");
    let vitally = emulator(Faults::default());
    emulator_destination(&mut db, "op_ret_d", &vitally);
    destination(&mut db, "op_ret_unreachable");
    db.batch_execute(
        "CREATE TABLE op_ret AS SELECT g AS id, 0 AS v FROM generate_series(1, 10) g;
         SELECT vitally.create_sync('op_ret_s', 'op_ret_d', 'account', 'upsert', 'SELECT * FROM op_ret');
         SELECT vitally.create_sync('op_ret_pending', 'op_ret_unreachable', 'account', 'upsert', 'SELECT * FROM op_ret WHERE id = 1');",
    )
    .unwrap();
    let mut runs = Vec::new();
    for change in ["true", "id <= 3", "id = 4"] {
        db.batch_execute(&format!("UPDATE op_ret SET v = v + 1 WHERE {change}")).unwrap();
        let run: i64 = scalar(&mut db, "SELECT vitally.sync('op_ret_s')");
        assert_eq!(scalar::<String>(&mut db, &format!("SELECT vitally.wait({run}, '30 seconds')")), "succeeded");
        runs.push(run);
    }
    db.batch_execute("SELECT vitally.sync('op_ret_pending')").unwrap();
    // Make the first two runs a month old; in the first, two records failed and one
    // failed but was queued again since.
    db.batch_execute(&format!(
        "UPDATE vitally.record SET status = 'failed', error = 'x', delivered_at = NULL
          WHERE run_id = {r1} AND sync_key IN ('5', '6', '7');
         UPDATE vitally.record SET replaced_at = now() - interval '30 days' WHERE run_id = {r1} AND sync_key = '7';
         DELETE FROM vitally.delivery_state d USING vitally.sync s
          WHERE s.id = d.sync_id AND s.name = 'op_ret_s' AND d.sync_key IN ('5', '6');
         UPDATE vitally.record SET queued_at = now() - interval '30 days', delivered_at = now() - interval '30 days'
          WHERE run_id IN ({r1}, {r2}) AND status = 'delivered';
         UPDATE vitally.record SET queued_at = now() - interval '30 days' WHERE run_id = {r1} AND status = 'failed';
         UPDATE vitally.record r SET queued_at = now() - interval '30 days'
           FROM vitally.sync s WHERE s.id = r.sync_id AND s.name = 'op_ret_pending';
         UPDATE vitally.sync_run SET started_at = now() - interval '30 days', finished_at = now() - interval '30 days'
          WHERE id IN ({r1}, {r2});",
        r1 = runs[0],
        r2 = runs[1]
    ))
    .unwrap();
    // The worker prunes every few seconds with the default retention (14 days).
    eventually("the worker to remove month-old records", Duration::from_secs(60), || {
        let left: i64 = scalar(&mut db, &format!("SELECT count(*) FROM vitally.record WHERE run_id = {}", runs[1]));
        (left == 0).then_some(())
    });
    let keys: Vec<String> = db
        .query(&format!("SELECT sync_key FROM vitally.record WHERE run_id = {} ORDER BY sync_key", runs[0]), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["5", "6"], "failed records stay; delivered ones and a failed one queued again since go");
    let kept_runs: Vec<i64> =
        db.query("SELECT id FROM vitally.sync_runs WHERE sync_name = 'op_ret_s' ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(kept_runs, [runs[0], runs[2]], "a run with failed records and the last run stay");
    assert_eq!(scalar::<i64>(&mut db, &format!("SELECT count(*) FROM vitally.record WHERE run_id = {}", runs[2])), 1);
    let pending: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.records WHERE sync_name = 'op_ret_pending' AND status = 'pending'");
    assert_eq!(pending, 1, "a pending record is never removed, however old");
    // The delivery state is not history: nothing is sent again.
    db.batch_execute("UPDATE op_ret SET v = v").unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('op_ret_s')");
    assert_eq!(records_queued(&mut db, run), 2, "only the two failed");
}

fn metrics_count_what_vitally_answered_per_destination() {
    let mut admin = cluster().admin(APP_DB);
    admin
        .batch_execute(
            "CREATE ROLE op_met_owner LOGIN; GRANT vitally_user TO op_met_owner;
             CREATE ROLE op_met_other LOGIN; GRANT vitally_user TO op_met_other;
             CREATE ROLE op_met_monitor LOGIN; GRANT pg_monitor TO op_met_monitor;
             CREATE TABLE op_met AS SELECT g AS id, g AS v FROM generate_series(1, 200) g;
             GRANT SELECT ON op_met TO op_met_owner;",
        )
        .unwrap();
    // Events are a type this workspace blocks: the two fail, the accounts go.
    let vitally = emulator(Faults { error_rate: 0.3, burst_429: 3, reset_secs: 1, blocked_types: vec!["track".into()], ..Faults::default() });
    let mut owner = cluster().connect(APP_DB, "op_met_owner");
    emulator_destination(&mut owner, "op_met_d", &vitally);
    destination(&mut owner, "op_met_idle");
    owner
        .batch_execute(
            "SELECT vitally.create_sync('op_met_s', 'op_met_d', 'account', 'upsert', 'SELECT * FROM op_met');
             SELECT vitally.create_sync('op_met_e', 'op_met_d', 'event', 'append',
                    $$SELECT id, 'Ping' AS event, id AS account_id FROM op_met WHERE id <= 2$$)",
        )
        .unwrap();
    // Batch size 100: 200 accounts are two requests; under 30% 5xx and three 429s.
    assert_eq!(sync_and_wait(&mut owner, "op_met_s", 60), "succeeded");
    assert_eq!(sync_and_wait(&mut owner, "op_met_e", 60), "failed");
    let row = owner
        .query_one(
            "SELECT pending, oldest_pending_seconds, delivered_per_second, delivered_last_hour, failed_last_hour,
                    retried_last_hour, rate_limited_last_hour, failed_now, worker_up
               FROM vitally.metrics WHERE destination = 'op_met_d'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0, "nothing pending");
    assert_eq!(row.get::<_, f64>(1), 0.0);
    assert!(row.get::<_, f64>(2) > 0.0, "delivered in the last five minutes");
    assert_eq!(row.get::<_, i64>(3), 200);
    assert_eq!(row.get::<_, i64>(4), 2, "the two bad events");
    assert!(row.get::<_, i64>(6) >= 1, "429s are counted: {}", row.get::<_, i64>(6));
    assert_eq!(row.get::<_, i64>(7), 2);
    assert!(row.get::<_, bool>(8), "the worker is up");
    let idle = owner.query_one("SELECT pending, oldest_pending_seconds FROM vitally.metrics WHERE destination = 'op_met_idle'", &[]).unwrap();
    assert_eq!((idle.get::<_, i64>(0), idle.get::<_, f64>(1)), (0, 0.0));
    // Queued for a destination that does not answer: the age of the oldest grows.
    owner.batch_execute("SELECT vitally.create_sync('op_met_stuck', 'op_met_idle', 'account', 'upsert', 'SELECT * FROM op_met WHERE id <= 5'); SELECT vitally.sync('op_met_stuck')").unwrap();
    let stuck: (i64, f64) = eventually("the pending age to grow", Duration::from_secs(10), || {
        let r = owner.query_one("SELECT pending, oldest_pending_seconds FROM vitally.metrics WHERE destination = 'op_met_idle'", &[]).unwrap();
        let v: (i64, f64) = (r.get(0), r.get(1));
        (v.1 > 0.0).then_some(v)
    });
    assert_eq!(stuck.0, 5);

    // Another user sees none of it; a pg_monitor member sees every destination's figures.
    let mut other = cluster().connect(APP_DB, "op_met_other");
    assert_eq!(scalar::<i64>(&mut other, "SELECT count(*) FROM vitally.metrics WHERE destination LIKE 'op_met%'"), 0);
    let mut monitor = cluster().connect(APP_DB, "op_met_monitor");
    assert_eq!(scalar::<i64>(&mut monitor, "SELECT count(*) FROM vitally.metrics WHERE destination LIKE 'op_met%'"), 2);
    assert!(scalar::<bool>(&mut monitor, "SELECT bool_and(worker_up) FROM vitally.metrics"));
    let err = sql_error(monitor.batch_execute("SELECT * FROM vitally.records"));
    assert_eq!(err.code, "42501", "monitoring sees figures, not data");
    owner
        .batch_execute("SELECT vitally.drop_sync('op_met_stuck'); SELECT vitally.drop_sync('op_met_s'); SELECT vitally.drop_sync('op_met_e')")
        .unwrap();
}

fn a_long_sync_reports_progress_and_a_quick_one_is_quiet() {
    let mut admin = fresh_database(cluster(), "op_progress");
    destination(&mut admin, "d");
    let (mut db, notices) = cluster().connect_with_notices("op_progress", "postgres");
    db.batch_execute(
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 3) g;
         SELECT vitally.create_sync('quick', 'd', 'account', 'upsert', 'SELECT id FROM t');
         SELECT vitally.create_sync('slow', 'd', 'account', 'upsert',
                'WITH pause AS (SELECT pg_sleep(1.2)) SELECT id FROM t, pause');
         SET client_min_messages = notice;",
    )
    .unwrap();
    db.batch_execute("SELECT vitally.sync('quick')").unwrap();
    let quick: Vec<String> = notices.lock().unwrap().drain(..).filter(|n| n.starts_with("vitally.sync")).collect();
    assert!(quick.is_empty(), "a quick sync says nothing: {quick:?}");
    db.batch_execute("SELECT vitally.sync('slow')").unwrap();
    let slow: Vec<String> = notices.lock().unwrap().drain(..).filter(|n| n.starts_with("vitally.sync")).collect();
    assert_eq!(slow.len(), 3, "one NOTICE per phase: {slow:?}");
    assert!(slow[0].starts_with("vitally.sync('slow'): ran the query and compared it with what was delivered: 3 rows in "), "{}", slow[0]);
    assert!(slow[1].starts_with("vitally.sync('slow'): made 3 records of rows new, changed or invalid in "), "{}", slow[1]);
    assert!(slow[2].starts_with("vitally.sync('slow'): queued 3 records, 0 invalid, 0 unchanged; run "), "{}", slow[2]);
}

/// pg_dump keeps destinations (with their keys), syncs and what was delivered; a restore
/// into a new cluster sends only what changed since.
fn a_dump_restored_into_a_new_cluster_delivers_only_what_changed() {
    let vitally = emulator(Faults::default());
    let mut src = fresh_database(cluster(), "op_dump_src");
    src.batch_execute(
        "DO $$ BEGIN CREATE ROLE op_dump_owner LOGIN; EXCEPTION WHEN duplicate_object THEN END $$; GRANT vitally_user TO op_dump_owner;
                       CREATE TABLE accounts AS SELECT g AS id, 'account ' || g AS name FROM generate_series(1, 5) g;
                       GRANT SELECT ON accounts TO op_dump_owner;",
    )
    .unwrap();
    let mut owner = cluster().connect("op_dump_src", "op_dump_owner");
    emulator_destination(&mut owner, "prod", &vitally);
    owner.batch_execute("SELECT vitally.create_sync('accounts', 'prod', 'account', 'upsert', 'SELECT * FROM accounts')").unwrap();
    owner.batch_execute("SELECT vitally.sync('accounts')").unwrap();
    assert_eq!(deliver_by_hand(&mut src, "accounts"), 5);

    let restored =
        Cluster::start("restored", &["shared_preload_libraries = 'vitally_sync'", "vitally.database = 'app'", "vitally.retry_min_delay = '100ms'"]);
    // (No CREATE EXTENSION here: the restore makes it.)
    // The documented procedure: roles (and their membership in vitally_user) first,
    // then the database.
    let globals = vitally_e2e::path_str(&restored.dir.join("globals.sql"));
    let file = vitally_e2e::path_str(&restored.dir.join("app.dump"));
    cluster().program("pg_dumpall", &["--globals-only", "-f", &globals]);
    cluster().program("pg_dump", &["-Fc", "-f", &file, "op_dump_src"]);
    restored.program("psql", &["-q", "-d", "postgres", "-f", &globals]);
    restored.admin("postgres").batch_execute("CREATE DATABASE app").unwrap();
    restored.program("pg_restore", &["--exit-on-error", "-d", "app", &file]);

    let mut db = restored.connect("app", "op_dump_owner");
    let row = db.query_one("SELECT analytics_api_key_set, analytics_url FROM vitally.destinations WHERE name = 'prod'", &[]).unwrap();
    assert!(row.get::<_, bool>(0), "the key came along");
    assert_eq!(row.get::<_, String>(1), vitally.analytics_url());
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('accounts')");
    let r = db.query_one("SELECT records_queued, records_unchanged FROM vitally.sync_runs WHERE id = $1", &[&run]).unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (0, 5), "nothing delivered before is sent again");
    restored.admin("app").batch_execute("UPDATE accounts SET name = 'renamed' WHERE id = 2").unwrap();
    assert_eq!(sync_and_wait(&mut db, "accounts", 30), "succeeded");
    let sent: Vec<String> = vitally.received().iter().map(|r| r.body.to_string()).collect();
    assert_eq!(sent.len(), 1, "only the changed account reached Vitally: {sent:?}");
    assert!(sent[0].contains("renamed"), "{}", sent[0]);
    // A new sync in the restored database does not collide with restored ids.
    db.batch_execute("SELECT vitally.create_sync('accounts2', 'prod', 'account', 'upsert', 'SELECT * FROM accounts')").unwrap();
}

/// A server restarted with a new library before `ALTER EXTENSION vitally_sync UPDATE`:
/// the worker touches nothing of the old schema (its statements would fail on it, and it
/// would send its jobs again after each restart) and says what it waits for. After the
/// update it delivers, and a run 0.1.0 left 'running' with nothing pending is finished.
fn the_worker_waits_for_alter_extension_update_and_the_update_finishes_stuck_runs() {
    let own = Cluster::with_worker("versions", &[]);
    let mut db = own.admin("app");
    db.batch_execute("DROP EXTENSION vitally_sync; CREATE EXTENSION vitally_sync VERSION '0.1.0'").unwrap();
    let library: String = scalar(&mut db, "SELECT default_version FROM pg_available_extensions WHERE name = 'vitally_sync'");
    eventually("the worker to say it waits for the update", Duration::from_secs(30), || {
        own.log()
            .contains(&format!(
                "extension vitally_sync 0.1.0 in database \"app\", library {library}: waiting for ALTER EXTENSION vitally_sync UPDATE"
            ))
            .then_some(())
    });
    // As 0.1.0 left it: a run whose records a newer run took over, never finished.
    db.batch_execute(
        "SELECT vitally.create_destination('v_d', analytics_api_key => 'k', analytics_url => 'http://127.0.0.1:9/analytics/v1');
         CREATE TABLE v AS SELECT 1 AS id;
         SELECT vitally.create_sync('v_s', 'v_d', 'account', 'upsert', 'SELECT * FROM v');
         INSERT INTO vitally.sync_run (sync_id, planned_at, records_queued) SELECT id, now(), 1 FROM vitally.sync WHERE name = 'v_s';",
    )
    .unwrap();
    db.batch_execute("ALTER EXTENSION vitally_sync UPDATE").unwrap();
    let stuck: String = scalar(&mut db, "SELECT status FROM vitally.sync_runs WHERE sync_name = 'v_s' ORDER BY id LIMIT 1");
    assert_eq!(stuck, "succeeded");
    eventually("the worker to find the updated extension", Duration::from_secs(30), || {
        own.log().contains("extension found in database \"app\"").then_some(())
    });
    let vitally = emulator(Faults::default());
    emulator_destination(&mut db, "v_e", &vitally);
    db.batch_execute("SELECT vitally.alter_sync('v_s', destination => 'v_e')").unwrap();
    assert_eq!(sync_and_wait(&mut db, "v_s", 30), "succeeded");
    assert_eq!(vitally.count("accounts"), 1);
}
