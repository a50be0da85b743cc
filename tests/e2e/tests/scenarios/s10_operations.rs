//! Running it for a year: upgrades, scheduling with pg_cron, retention, monitoring,
//! backups.

use crate::cluster;
use vitally_e2e::{fresh_database, Client};

crate::trials!("10_operations": upgrade_from_each_released_version_equals_a_fresh_install);

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
