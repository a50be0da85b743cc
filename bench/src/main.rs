//! `make bench`: measures vitally_sync against baselines in one run on this machine
//! and prints a table of ratios. Not a test: it asserts nothing, it reports.

use std::time::{Duration, Instant};
use vitally_e2e::{deliver_by_hand, scalar, Client, Cluster};

mod memory;

struct Row {
    what: String,
    took: Duration,
    baseline: Duration,
    note: String,
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

fn main() {
    let rows_n: i64 = std::env::var("BENCH_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let cluster = Cluster::start(
        "bench",
        &["shared_preload_libraries = 'vitally_sync'", "vitally.database = 'bench'", "shared_buffers = '1GB'", "work_mem = '16MB'"],
    );
    cluster.admin("postgres").batch_execute("CREATE DATABASE bench").unwrap();
    let mut db = cluster.admin("bench");
    db.batch_execute(&format!(
        "CREATE EXTENSION vitally_sync;
         SELECT vitally.create_destination('d', analytics_api_key => 'k', analytics_url => 'http://127.0.0.1:9/a');
         CREATE TABLE accounts AS
             SELECT g AS id, 'Account ' || g AS name, (ARRAY['free', 'pro', 'enterprise'])[1 + g % 3] AS plan,
                    (g % 1000) * 12.5 AS mrr, now() - g * interval '1 minute' AS last_seen, g % 50 AS seats
               FROM generate_series(1, {rows_n}) g;
         ALTER TABLE accounts ADD PRIMARY KEY (id);
         SELECT vitally.create_sync('accounts', 'd', 'account', 'upsert',
                'SELECT id, name, plan, mrr, last_seen, seats FROM accounts', 'id');"
    ))
    .unwrap();
    db.batch_execute("VACUUM ANALYZE accounts").unwrap();
    let mut table = Vec::new();
    let query = "SELECT id, name, plan, mrr, last_seen, seats FROM accounts";
    let pid: i32 = scalar(&mut db, "SELECT pg_backend_pid()");

    let baseline = |db: &mut Client| {
        let (_, took) = timed(|| db.batch_execute(&format!("CREATE TEMP TABLE t AS {query}; DROP TABLE t")).unwrap());
        took
    };
    baseline(&mut db); // warm the cache
    let plain = baseline(&mut db);

    let mut run = |db: &mut Client, label: &str, note: &str| {
        let sampler = memory::Sampler::start(pid);
        let (run_id, took) = timed(|| scalar::<i64>(db, "SELECT vitally.sync('accounts')"));
        let peak = sampler.stop();
        let queued: i64 = scalar(db, &format!("SELECT records_queued FROM vitally.sync_runs WHERE id = {run_id}"));
        table.push(Row {
            what: format!("vitally.sync(), {label}"),
            took,
            baseline: plain,
            note: format!("{queued} queued; {note}; backend peak private memory {:.0} MB", peak as f64 / 1048576.0),
        });
    };
    run(&mut db, "first run (all new)", "every row queued");
    deliver_by_hand(&mut db, "accounts");
    db.batch_execute("UPDATE accounts SET seats = seats + 1 WHERE id % 100 = 0").unwrap();
    db.batch_execute("VACUUM ANALYZE accounts").unwrap();
    run(&mut db, "second run (1% changed)", "");
    deliver_by_hand(&mut db, "accounts");
    run(&mut db, "third run (nothing changed)", "");

    println!("\nvitally_sync benchmarks: {rows_n} rows, {}", machine());
    println!("{:<44} {:>10} {:>12} {:>7}  {}", "measurement", "took", "baseline", "ratio", "notes");
    for r in &table {
        println!(
            "{:<44} {:>9.2}s {:>11.2}s {:>6.2}x  {}",
            r.what,
            r.took.as_secs_f64(),
            r.baseline.as_secs_f64(),
            r.took.as_secs_f64() / r.baseline.as_secs_f64(),
            r.note
        );
    }
    println!("baseline: CREATE TEMP TABLE t AS <the sync's query>, same session, warm cache");
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    format!("{cpus} cores, {:.0} GiB, PostgreSQL 15", mem as f64 / 1048576.0)
}
