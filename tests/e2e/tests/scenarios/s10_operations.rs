//! Running it for a year: upgrades, scheduling with pg_cron, retention, monitoring,
//! backups.

use crate::{cluster, APP_DB};
use std::time::Duration;
use vitally_e2e::{destination, eventually, fresh_database, scalar, sql_error, Client};

crate::trials!("10_operations":
    upgrade_from_each_released_version_equals_a_fresh_install,
    a_scheduled_sync_runs_from_pg_cron_as_its_owner,
    scheduling_without_pg_cron_says_how_to_get_it,
    overlapping_runs_of_one_sync_queue_a_change_once,
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
        assert!(missing.is_empty() && extra.is_empty(), "upgrade from {version} differs from a fresh install:\nmissing {missing:#?}\nextra {extra:#?}");
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
        owner
            .query_opt("SELECT records_queued FROM vitally.sync_runs WHERE sync_name = 'op_cron_s'", &[])
            .unwrap()
            .map(|r| r.get(0))
    });
    assert_eq!(queued, 3);
    let status: String =
        scalar(&mut admin, &format!("SELECT status FROM cron.job_run_details WHERE jobid = {job} ORDER BY runid LIMIT 1"));
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
        let waiting: i64 = scalar(
            &mut admin,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%op_overlap_s%'",
        );
        (waiting == 1).then_some(())
    });
    first.batch_execute("COMMIT").unwrap();
    let run = second.join().unwrap();
    let row = admin
        .query_one("SELECT records_queued, records_unchanged FROM vitally.sync_run WHERE id = $1", &[&run])
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 50), "the second run queues nothing again");
    let copies: i64 = scalar(
        &mut admin,
        "SELECT count(*) FROM vitally.records WHERE sync_name = 'op_overlap_s'",
    );
    assert_eq!(copies, 50, "one record per row");
    admin.batch_execute("SELECT vitally.drop_sync('op_overlap_s')").unwrap();
}
