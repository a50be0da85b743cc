//! Installing: CREATE EXTENSION on a fresh database makes everything, DROP removes it.

use crate::cluster;
use vitally_e2e::fresh_database;

crate::trials!("00_install": create_extension_makes_schema_role_and_view, drop_and_create_again);

fn create_extension_makes_schema_role_and_view() {
    let mut db = fresh_database(cluster(), "install_a");
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'vitally'),
                    (SELECT count(*) FROM pg_roles WHERE rolname = 'vitally_user'),
                    (SELECT count(*) FROM vitally.destinations)",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)), (1, 1, 0));
}

fn drop_and_create_again() {
    let mut db = fresh_database(cluster(), "install_b");
    db.batch_execute("SELECT vitally.create_destination('d', analytics_api_key => 'k1')").unwrap();
    db.batch_execute("DROP EXTENSION vitally_sync").unwrap();
    let schemas: i64 = db.query_one("SELECT count(*) FROM pg_namespace WHERE nspname = 'vitally'", &[]).unwrap().get(0);
    assert_eq!(schemas, 0, "DROP EXTENSION leaves no schema behind");
    db.batch_execute("CREATE EXTENSION vitally_sync").unwrap();
    let n: i64 = db.query_one("SELECT count(*) FROM vitally.destinations", &[]).unwrap().get(0);
    assert_eq!(n, 0);
}
