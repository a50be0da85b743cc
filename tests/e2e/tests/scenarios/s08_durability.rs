//! Nothing is lost: crashes and stops in the middle of delivery, on clusters of
//! their own; and settings picked up on reload.

use std::collections::HashMap;
use std::time::Duration;
use vitally_e2e::{emulator, emulator_destination, eventually, scalar, Client, Cluster, Emulator, Faults};

crate::trials!("08_durability":
    kill_9_of_the_postmaster_mid_delivery_loses_nothing,
    a_fast_shutdown_mid_delivery_loses_nothing,
    kill_9_of_the_worker_mid_delivery_loses_nothing,
    a_standby_runs_nothing_and_after_failover_mid_delivery_the_new_primary_delivers_everything,
    a_reload_picks_up_batch_size_and_max_attempts,
    syncs_taking_over_records_whose_outcomes_are_being_recorded_never_fail_with_a_deadlock,
);

const RECORDS: i64 = 20_000;

/// Queues RECORDS accounts for a destination at `vitally` and returns once the
/// emulator has received `before` messages: delivery is under way.
fn start_delivering(cluster: &Cluster, vitally: &Emulator, before: u64) {
    let mut db = cluster.admin("app");
    emulator_destination(&mut db, "d", vitally);
    db.batch_execute(&format!(
        "CREATE TABLE accounts AS SELECT 'a' || g AS id, g AS seats FROM generate_series(1, {RECORDS}) g;
         SELECT vitally.create_sync('accounts', 'd', 'account', 'upsert', 'SELECT * FROM accounts', 'id');
         SELECT vitally.sync('accounts');"
    ))
    .unwrap();
    eventually("delivery to be under way", Duration::from_secs(60), || (vitally.counters().messages >= before).then_some(()));
}

/// Every record delivered in the end; each account received at most twice, and a
/// repeat always under the same messageId (so Vitally drops it).
fn everything_arrived_once_or_as_a_harmless_repeat(cluster: &Cluster, vitally: &Emulator) {
    // Each look connects anew: a crash restart ends every connection of the moment.
    let connect = || Client::connect(&format!("host=127.0.0.1 port={} dbname=app user=postgres", cluster.port), postgres::NoTls).ok();
    eventually("every record delivered", Duration::from_secs(180), || {
        let n: i64 = connect()?.query_one("SELECT count(*) FROM vitally.record WHERE status = 'delivered'", &[]).ok()?.get(0);
        (n == RECORDS).then_some(())
    });
    let mut db = connect().expect("a connection");
    let failed: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.record WHERE status <> 'delivered'");
    assert_eq!(failed, 0);
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for r in vitally.received() {
        let account = r.body["accountId"].as_str().unwrap().to_string();
        seen.entry(account).or_default().push(r.message_id.unwrap());
    }
    assert_eq!(seen.len() as i64, RECORDS, "every account arrived");
    for (account, ids) in &seen {
        assert!(ids.len() <= 2, "{account} arrived {} times", ids.len());
        assert!(ids.iter().all(|id| *id == ids[0]), "{account} was repeated under another messageId");
    }
    assert_eq!(vitally.count("accounts") as i64, RECORDS);
}

fn kill_9_of_the_postmaster_mid_delivery_loses_nothing() {
    let cluster = Cluster::with_worker("kill-postmaster", &[]);
    let vitally = emulator(Faults { latency_ms: 100, ..Faults::default() });
    start_delivering(&cluster, &vitally, 2_000);
    cluster.kill9(cluster.postmaster_pid());
    cluster.start_again();
    everything_arrived_once_or_as_a_harmless_repeat(&cluster, &vitally);
}

fn a_fast_shutdown_mid_delivery_loses_nothing() {
    let cluster = Cluster::with_worker("fast-stop", &[]);
    let vitally = emulator(Faults { latency_ms: 100, ..Faults::default() });
    start_delivering(&cluster, &vitally, 2_000);
    cluster.stop_fast();
    let log = cluster.log();
    assert!(log.contains("vitally_sync worker stopped"), "the worker stopped cleanly");
    cluster.start_again();
    everything_arrived_once_or_as_a_harmless_repeat(&cluster, &vitally);
}

fn kill_9_of_the_worker_mid_delivery_loses_nothing() {
    let cluster = Cluster::with_worker("kill-worker", &[]);
    let vitally = emulator(Faults { latency_ms: 100, ..Faults::default() });
    start_delivering(&cluster, &vitally, 2_000);
    let worker: i32 = scalar(&mut cluster.admin("app"), "SELECT pid FROM pg_stat_activity WHERE backend_type = 'vitally_sync worker'");
    cluster.kill9(worker);
    everything_arrived_once_or_as_a_harmless_repeat(&cluster, &vitally);
}

/// What a server logged of ours that an operator would be paged for.
fn our_complaints(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("vitally") && ["ERROR", "FATAL", "PANIC", "WARNING"].iter().any(|level| l.contains(&format!("{level}:"))))
        .collect()
}

/// A primary with a streaming standby (`pg_basebackup -R`). On the standby nothing of
/// ours runs or complains; the primary is killed mid-delivery and the standby promoted:
/// the new primary delivers every record the old one had queued, a repeat only under
/// the same messageId, and the run's counts end final and right.
fn a_standby_runs_nothing_and_after_failover_mid_delivery_the_new_primary_delivers_everything() {
    let primary = Cluster::with_worker("failover-primary", &[]);
    let standby = primary.standby("failover-standby");
    let vitally = emulator(Faults { latency_ms: 100, ..Faults::default() });
    start_delivering(&primary, &vitally, 2_000);
    eventually("the standby to replay the queue", Duration::from_secs(60), || {
        let mut db = Client::connect(&format!("host=127.0.0.1 port={} dbname=app user=postgres", standby.port), postgres::NoTls).ok()?;
        let n: i64 = db.query_one("SELECT count(*) FROM vitally.record", &[]).ok()?.get(0);
        (n == RECORDS).then_some(())
    });
    let ours: i64 = scalar(
        &mut standby.admin("app"),
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('vitally_sync launcher', 'vitally_sync worker')",
    );
    assert_eq!(ours, 0, "no launcher and no worker on a standby");
    primary.kill9(primary.postmaster_pid());

    let before = standby.log();
    assert_eq!(our_complaints(&before), Vec::<&str>::new(), "the standby logged nothing of ours");
    assert!(!before.contains("vitally_sync launcher started"), "nothing of ours started on the standby");
    standby.promote();
    everything_arrived_once_or_as_a_harmless_repeat(&standby, &vitally);
    let mut db = standby.admin("app");
    let run = db.query_one("SELECT status, records_queued, records_delivered, records_failed FROM vitally.sync_runs", &[]).unwrap();
    assert_eq!(run.get::<_, &str>(0), "succeeded");
    assert_eq!((run.get::<_, i64>(1), run.get::<_, i64>(2), run.get::<_, i64>(3)), (RECORDS, RECORDS, 0));
    assert_eq!(our_complaints(&standby.log()), Vec::<&str>::new(), "nothing of ours complained after promotion either");
}

fn reloaded(cluster: &Cluster, setting: &str) {
    eventually("the worker to reload its settings", Duration::from_secs(30), || cluster.log().contains(setting).then_some(()));
}

fn a_reload_picks_up_batch_size_and_max_attempts() {
    let cluster = Cluster::with_worker("reload", &[]);
    // The worker restarts once "app" exists; a reload before that would go unseen.
    reloaded(&cluster, "extension found in database \"app\"");
    let mut db = cluster.admin("app");
    db.batch_execute("ALTER SYSTEM SET vitally.batch_size = 7").unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    reloaded(&cluster, "settings reloaded (batch_size 7)");
    let vitally = emulator(Faults::default());
    emulator_destination(&mut db, "d", &vitally);
    db.batch_execute(
        "CREATE TABLE accounts AS SELECT 'a' || g AS id FROM generate_series(1, 50) g;
         SELECT vitally.create_sync('accounts', 'd', 'account', 'upsert', 'SELECT * FROM accounts', 'id');",
    )
    .unwrap();
    assert_eq!(vitally_e2e::sync_and_wait(&mut db, "accounts", 60), "succeeded");
    assert_eq!(vitally.counters().analytics_requests, 8, "50 records in batches of 7");

    db.batch_execute("ALTER SYSTEM SET vitally.max_attempts = 2").unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    eventually("a second reload", Duration::from_secs(30), || (cluster.log().matches("settings reloaded").count() >= 2).then_some(()));
    let down = emulator(Faults { error_rate: 1.0, ..Faults::default() });
    emulator_destination(&mut db, "down", &down);
    db.batch_execute("SELECT vitally.create_sync('down', 'down', 'account', 'upsert', 'SELECT * FROM accounts LIMIT 1', 'id')").unwrap();
    assert_eq!(vitally_e2e::sync_and_wait(&mut db, "down", 60), "failed");
    let row = db.query_one("SELECT attempts, http_status, error FROM vitally.records WHERE sync_name = 'down'", &[]).unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    assert_eq!(row.get::<_, Option<i32>>(1), Some(503));
    assert_eq!(row.get::<_, &str>(2), "Service Unavailable (gave up after 2 attempts)");
}

/// `sync()` takes over pending records (a newer version of the row) while the worker
/// records outcomes of the same records: both update the same rows, in different orders.
/// That deadlocked, and the user's `sync()` was the one cancelled (twice in one CI run, in
/// 10_operations; this load did not reproduce it, so it guards the outcome, not the race).
/// The worker now looks for deadlocks first and tries its transaction again.
fn syncs_taking_over_records_whose_outcomes_are_being_recorded_never_fail_with_a_deadlock() {
    let cluster = Cluster::with_worker("takeover", &[]);
    let vitally = emulator(Faults { latency_ms: 5, ..Faults::default() });
    let mut db = cluster.admin("app");
    emulator_destination(&mut db, "d", &vitally);
    db.batch_execute(
        "CREATE TABLE accounts AS SELECT 'a' || g AS id, 0 AS seats FROM generate_series(1, 3000) g;
         SELECT vitally.create_sync('accounts', 'd', 'account', 'upsert', 'SELECT * FROM accounts', 'id');",
    )
    .unwrap();
    let mut runs = Vec::new();
    for round in 1..=15 {
        db.batch_execute(&format!("UPDATE accounts SET seats = {round}")).unwrap();
        let run: i64 = db.query_one("SELECT vitally.sync('accounts')", &[]).unwrap_or_else(|e| panic!("round {round}: sync() failed: {e}")).get(0);
        runs.push(run);
    }
    let last = *runs.last().unwrap();
    let status: String = scalar(&mut db, &format!("SELECT vitally.wait({last}, timeout => '120 seconds')"));
    assert_eq!(status, "succeeded");
    let stale: i64 = scalar(&mut db, "SELECT count(*) FROM vitally.records WHERE status = 'pending'");
    assert_eq!(stale, 0, "nothing left pending");
    assert_eq!(vitally.count("accounts"), 3000);
    // A deadlock the worker loses is caught, never logged as an ERROR: any in the log was a user's.
    assert!(!cluster.log().contains("deadlock detected"), "no session lost a deadlock to the worker");
}
