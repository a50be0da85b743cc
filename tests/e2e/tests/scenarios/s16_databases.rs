//! Every database: one launcher, one worker per database that has the extension, new
//! databases served without a restart, and DROP / RENAME / copy of a served database
//! working as they do without us. Each on a cluster of its own, `vitally.database` unset.

use std::time::{Duration, Instant};
use vitally_e2e::{emulator, emulator_destination, eventually, scalar, sql_error, sync_and_wait, Client, Cluster, Emulator, Faults};

crate::trials!("16_databases":
    every_database_with_the_extension_is_served_and_a_new_one_within_seconds,
    when_max_worker_processes_is_used_up_it_says_so_and_serves_once_a_slot_frees,
    drop_extension_mid_delivery_stops_the_worker_first_and_never_deadlocks,
);

fn cluster(name: &str, conf: &[&str]) -> Cluster {
    let mut settings = vec!["shared_preload_libraries = 'vitally_sync'", "vitally.retry_min_delay = '100ms'"];
    settings.extend_from_slice(conf);
    Cluster::start(name, &settings)
}

fn worker_of(c: &Cluster, db: &str) -> Option<i32> {
    c.admin("postgres")
        .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'vitally_sync worker' AND datname = $1", &[&db])
        .unwrap()
        .map(|r| r.get(0))
}

/// A database with the extension, a destination at `vitally` and a sync of `n`
/// accounts whose ids start with the database's name.
fn served_database(c: &Cluster, name: &str, vitally: &Emulator, n: i32) -> Client {
    c.admin("postgres").batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let mut db = c.admin(name);
    db.batch_execute("CREATE EXTENSION vitally_sync").unwrap();
    emulator_destination(&mut db, "d", vitally);
    db.batch_execute(&format!(
        "CREATE TABLE accounts AS SELECT '{name}-' || g AS id, g AS seats FROM generate_series(1, {n}) g;
         SELECT vitally.create_sync('accounts', 'd', 'account', 'upsert', 'SELECT * FROM accounts', 'id');"
    ))
    .unwrap();
    db
}

fn delivered_from(vitally: &Emulator, db: &str) -> usize {
    vitally.received().iter().filter(|r| r.body["accountId"].as_str().is_some_and(|a| a.starts_with(&format!("{db}-")))).count()
}

fn every_database_with_the_extension_is_served_and_a_new_one_within_seconds() {
    let c = cluster("databases", &[]);
    let vitally = emulator(Faults::default());
    let mut one = served_database(&c, "one", &vitally, 10);
    let mut two = served_database(&c, "two", &vitally, 20);
    c.admin("postgres").batch_execute("CREATE DATABASE three").unwrap();
    assert_eq!(sync_and_wait(&mut one, "accounts", 30), "succeeded");
    assert_eq!(sync_and_wait(&mut two, "accounts", 30), "succeeded");
    assert_eq!((delivered_from(&vitally, "one"), delivered_from(&vitally, "two")), (10, 20));
    assert_eq!(scalar::<String>(&mut one, "SELECT vitally.worker_status()"), "running");
    // The database without the extension: looked at, and left.
    eventually("no worker in database three", Duration::from_secs(30), || worker_of(&c, "three").is_none().then_some(()));
    assert!(!c.log().contains("database \"three\""), "nothing logged of three");

    // A database created while the server runs, given the extension: served within 10 s.
    let created = Instant::now();
    let mut four = served_database(&c, "four", &vitally, 5);
    eventually("a worker for database four", Duration::from_secs(10), || worker_of(&c, "four"));
    assert_eq!(sync_and_wait(&mut four, "accounts", 10), "succeeded");
    assert!(created.elapsed() < Duration::from_secs(10), "four delivered {:?} after CREATE DATABASE", created.elapsed());
    assert_eq!(delivered_from(&vitally, "four"), 5);

    // A role that may not drop a served database does not stop its worker by trying.
    let before = worker_of(&c, "one").expect("one is served");
    c.admin("postgres").batch_execute("CREATE ROLE mallory LOGIN CREATEDB").unwrap();
    let mut mallory = c.connect("postgres", "mallory");
    assert_eq!(sql_error(mallory.batch_execute("DROP DATABASE one")).code, "42501");
    assert_eq!(sql_error(mallory.batch_execute("ALTER DATABASE one RENAME TO mine")).code, "42501");
    assert_eq!(sql_error(mallory.batch_execute("CREATE DATABASE mine TEMPLATE one")).code, "42501");
    assert_eq!(worker_of(&c, "one"), Some(before), "the same worker serves one");

    // A DROP EXTENSION undone by a savepoint: the worker is back, and delivers.
    one.batch_execute("BEGIN; SAVEPOINT s; DROP EXTENSION vitally_sync; ROLLBACK TO s; COMMIT").unwrap();
    eventually("one's worker back after the undone drop", Duration::from_secs(10), || worker_of(&c, "one"));
    one.batch_execute("UPDATE accounts SET seats = -1 WHERE id = 'one-2'").unwrap();
    assert_eq!(sync_and_wait(&mut one, "accounts", 30), "succeeded");
    assert_eq!(delivered_from(&vitally, "one"), 11);

    // DROP DATABASE of a served one works (its worker would block it) and the rest go on.
    drop(two);
    c.admin("postgres").batch_execute("DROP DATABASE two").unwrap();
    one.batch_execute("UPDATE accounts SET seats = 0 WHERE id = 'one-1'").unwrap();
    assert_eq!(sync_and_wait(&mut one, "accounts", 30), "succeeded");
    assert_eq!(delivered_from(&vitally, "one"), 12);

    // The database looked at and left: CREATE EXTENSION there now brings a worker.
    c.admin("three").batch_execute("CREATE EXTENSION vitally_sync").unwrap();
    eventually("a worker for three after CREATE EXTENSION", Duration::from_secs(10), || worker_of(&c, "three"));

    // So do a rename and a copy: the renamed database is served again, and so is the copy.
    drop(four);
    c.admin("postgres").batch_execute("ALTER DATABASE four RENAME TO five").unwrap();
    let mut five = c.admin("five");
    five.batch_execute("UPDATE accounts SET seats = 0 WHERE id = 'four-1'").unwrap();
    assert_eq!(sync_and_wait(&mut five, "accounts", 30), "succeeded");
    assert_eq!(delivered_from(&vitally, "four"), 6);
    drop(five);
    c.admin("postgres").batch_execute("CREATE DATABASE six TEMPLATE five").unwrap();
    eventually("a worker for the copy", Duration::from_secs(10), || worker_of(&c, "six"));
    eventually("the worker of five back", Duration::from_secs(10), || worker_of(&c, "five"));

    // vitally.database narrows it to one database, on reload.
    let mut admin = c.admin("postgres");
    admin.batch_execute("ALTER SYSTEM SET vitally.database = 'one'").unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    eventually("only one's worker left", Duration::from_secs(10), || {
        (worker_of(&c, "five").is_none() && worker_of(&c, "six").is_none()).then_some(())
    });
    assert!(worker_of(&c, "one").is_some());
    let status: String = scalar(&mut c.admin("six"), "SELECT vitally.worker_status()");
    assert!(status.contains("vitally.database = 'one'"), "{status}");
}

fn when_max_worker_processes_is_used_up_it_says_so_and_serves_once_a_slot_frees() {
    // Four slots: the logical replication launcher, ours, and two workers.
    let c = cluster("no-slot", &["max_worker_processes = 4", "max_parallel_workers = 0"]);
    let vitally = emulator(Faults::default());
    let mut dbs: Vec<Client> = ["a", "b", "c"].iter().map(|n| served_database(&c, n, &vitally, 3)).collect();
    let starved = eventually("one database to find no worker slot", Duration::from_secs(30), || {
        let statuses: Vec<String> = dbs.iter_mut().map(|db| scalar(db, "SELECT vitally.worker_status()")).collect();
        let starved: Vec<usize> = (0..3).filter(|i| statuses[*i].contains("max_worker_processes = 4 is used up")).collect();
        let running = statuses.iter().filter(|s| *s == "running").count();
        (starved.len() == 1 && running == 2).then(|| starved[0])
    });
    assert!(c.log().contains("no background worker slot for database"), "a clear log line");
    let metric: String = scalar(&mut dbs[starved], "SELECT worker_status FROM vitally.metrics");
    assert!(metric.contains("raise max_worker_processes"), "{metric}");
    dbs[starved].query("SELECT vitally.sync('accounts')", &[]).unwrap_or_else(|e| panic!("sync() still queues: {e}"));

    // A served database dropped: its slot goes to the one that waited.
    let served = ["a", "b", "c"][(starved + 1) % 3];
    let waiting = ["a", "b", "c"][starved];
    dbs.clear();
    c.admin("postgres").batch_execute(&format!("DROP DATABASE {served}")).unwrap();
    eventually("the waiting database served", Duration::from_secs(30), || worker_of(&c, waiting));
    let mut db = c.admin(waiting);
    assert_eq!(scalar::<String>(&mut db, "SELECT vitally.wait((SELECT max(id) FROM vitally.sync_runs), timeout => '30 seconds')"), "succeeded");
    assert_eq!(delivered_from(&vitally, waiting), 3);
    assert!(c.log().contains(&format!("a worker slot came free for database \"{waiting}\"")));
}

/// DROP EXTENSION locks the extension's tables one by one; a round of the worker in
/// between took one and waited for another: a deadlock, and the user's DROP was the one
/// cancelled (seen once in a full run). The worker is now stopped first. Five times,
/// each mid-delivery.
fn drop_extension_mid_delivery_stops_the_worker_first_and_never_deadlocks() {
    let c = cluster("drop-mid-delivery", &[]);
    let vitally = emulator(Faults { latency_ms: 20, ..Faults::default() });
    c.admin("postgres").batch_execute("CREATE DATABASE app").unwrap();
    let mut db = c.admin("app");
    db.batch_execute("CREATE TABLE accounts AS SELECT 'a' || g AS id, g AS seats FROM generate_series(1, 5000) g").unwrap();
    for round in 0..5 {
        db.batch_execute("CREATE EXTENSION vitally_sync").unwrap();
        emulator_destination(&mut db, "d", &vitally);
        db.batch_execute(
            "SELECT vitally.create_sync('accounts', 'd', 'account', 'upsert', 'SELECT * FROM accounts', 'id');
             SELECT vitally.sync('accounts');",
        )
        .unwrap();
        let before = vitally.counters().messages;
        eventually("delivery under way", Duration::from_secs(30), || (vitally.counters().messages > before + 200).then_some(()));
        // An update in place (already at this version) takes the same path first.
        db.batch_execute("ALTER EXTENSION vitally_sync UPDATE").unwrap_or_else(|e| panic!("round {round}: ALTER EXTENSION: {e}"));
        db.batch_execute("DROP EXTENSION vitally_sync").unwrap_or_else(|e| panic!("round {round}: DROP EXTENSION: {e}"));
        assert_eq!(worker_of(&c, "app"), None, "round {round}: no worker after DROP EXTENSION");
    }
    assert!(!c.log().contains("deadlock detected"), "no deadlock in the log");
}
