//! `make bench`: measures vitally_sync against baselines in one run on this machine
//! and prints a table of ratios. Not a test: it asserts nothing, it reports.
//!
//! BENCH_ROWS (default 1,000,000) sizes the planning runs and the queue drained for
//! the worker's memory; BENCH_DELIVERY (default 20,000) the delivery runs; BENCH_DRAIN
//! (default BENCH_ROWS) the large queue drained;
//! BENCH_LIVE_SECONDS (default 60) the steady stream of live changes;
//! BENCH_ONLY=planning, delivery, live or rest runs one part; BENCH_ONLY=bound only the
//! latency-bound delivery row, BENCH_REPEAT times (default 5), to compare changes to it.

use std::time::{Duration, Instant};
use vitally_e2e::{deliver_by_hand, eventually, scalar, Client, Cluster};
use vitally_emulator::{Config, Emulator, Faults};

mod cpu;
mod live;
mod memory;
mod transport;

/// One line of the table: a figure, and the baseline it is compared with.
struct Row {
    what: String,
    value: f64,
    baseline: f64,
    unit: &'static str,
    note: String,
}

fn env(name: &str, default: i64) -> i64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() {
    let rows_n = env("BENCH_ROWS", 1_000_000);
    let delivery_n = env("BENCH_DELIVERY", 20_000);
    let drain_n = env("BENCH_DRAIN", rows_n);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let mut table = Vec::new();
    if only.is_empty() || only == "planning" {
        planning(rows_n, &mut table);
    }
    if only.is_empty() || only == "delivery" || only == "bound" {
        delivery(delivery_n, drain_n, only == "bound", &mut table);
    }
    if only.is_empty() || only == "live" {
        live::live(rows_n, env("BENCH_LIVE_SECONDS", 60), &mut table);
    }
    if only.is_empty() || only == "rest" {
        rest(env("BENCH_REST", 3_000), &mut table);
    }

    println!("\nvitally_sync benchmarks, {}", machine());
    println!("{:<52} {:>12} {:>12} {:>8}  notes", "measurement", "value", "baseline", "ratio");
    for r in &table {
        println!("{:<52} {:>10.2}{:<2} {:>10.2}{:<2} {:>7.2}x  {}", r.what, r.value, r.unit, r.baseline, r.unit, r.value / r.baseline, r.note);
    }
}

/// vitally.sync() over `n` rows next to CREATE TEMP TABLE AS of the same query, in
/// a cluster whose worker serves another database (nothing is sent).
fn planning(n: i64, table: &mut Vec<Row>) {
    let cluster =
        Cluster::start("bench-plan", &["shared_preload_libraries = 'vitally_sync'", "vitally.database = 'postgres'", "shared_buffers = '1GB'"]);
    cluster.admin("postgres").batch_execute("CREATE DATABASE bench").unwrap();
    let mut db = cluster.admin("bench");
    db.batch_execute(&format!(
        "SET client_min_messages = error;
         CREATE EXTENSION vitally_sync;
         SELECT vitally.create_destination('d', analytics_api_key => 'k', analytics_url => 'http://127.0.0.1:9/a');
         CREATE TABLE accounts AS
             SELECT g AS id, 'Account ' || g AS name, (ARRAY['free', 'pro', 'enterprise'])[1 + g % 3] AS plan,
                    (g % 1000) * 12.5 AS mrr, now() - g * interval '1 minute' AS last_seen, g % 50 AS seats
               FROM generate_series(1, {n}) g;
         ALTER TABLE accounts ADD PRIMARY KEY (id);
         SELECT vitally.create_sync('accounts', 'd', 'account', 'upsert',
                'SELECT id, name, plan, mrr, last_seen, seats FROM accounts', 'id');"
    ))
    .unwrap();
    db.batch_execute("VACUUM ANALYZE accounts").unwrap();
    let query = "SELECT id, name, plan, mrr, last_seen, seats FROM accounts";
    let pid: i32 = scalar(&mut db, "SELECT pg_backend_pid()");
    let plain = |db: &mut Client| {
        let t = Instant::now();
        db.batch_execute(&format!("CREATE TEMP TABLE t AS {query}; DROP TABLE t")).unwrap();
        t.elapsed()
    };
    plain(&mut db); // warm the cache
    let baseline = plain(&mut db).as_secs_f64();

    let mut growth: Vec<(i64, f64)> = Vec::new();
    let mut first_run = 0.0;
    let mut run = |db: &mut Client, label: &str| {
        let sampler = memory::Sampler::start(pid);
        let t = Instant::now();
        let run_id: i64 = scalar(db, "SELECT vitally.sync('accounts')");
        let took = t.elapsed().as_secs_f64();
        if first_run == 0.0 {
            first_run = took;
        }
        let peak = sampler.stop();
        let queued: i64 = scalar(db, &format!("SELECT records_queued FROM vitally.sync_runs WHERE id = {run_id}"));
        table.push(Row {
            what: format!("planning {n} rows: {label}"),
            value: took,
            baseline,
            unit: "s",
            note: format!("{queued} queued; backend peak private memory {:.0} MB", peak as f64 / 1048576.0),
        });
    };
    // How a first run grows: the same query over the first 100k and 300k rows.
    for part in [100_000, 300_000].into_iter().filter(|&p| p < n) {
        db.batch_execute(&format!(
            "SELECT vitally.create_sync('accounts_{part}', 'd', 'account', 'upsert',
                    'SELECT id, name, plan, mrr, last_seen, seats FROM accounts WHERE id <= {part}', 'id');"
        ))
        .unwrap();
        let t = Instant::now();
        let _: i64 = scalar(&mut db, &format!("SELECT vitally.sync('accounts_{part}')"));
        growth.push((part, t.elapsed().as_secs_f64()));
    }
    run(&mut db, "first run (all new)");
    deliver_by_hand(&mut db, "accounts");
    db.batch_execute("UPDATE accounts SET seats = seats + 1 WHERE id % 100 = 0").unwrap();
    db.batch_execute("VACUUM ANALYZE accounts").unwrap();
    run(&mut db, "second run (1% changed)");
    deliver_by_hand(&mut db, "accounts");
    run(&mut db, "third run (nothing changed)");
    println!("planning baseline: CREATE TEMP TABLE t AS <the sync's query>, same session, warm cache: {baseline:.2}s");
    // The physical floor of a first run: the same keys and payloads written durably.
    let t = Instant::now();
    db.batch_execute(&format!(
        "CREATE TABLE floor AS SELECT id::text AS key, jsonb_build_object('accountId', id::text, 'traits',
                jsonb_build_object('name', name, 'plan', plan, 'mrr', mrr, 'last_seen', last_seen, 'seats', seats)) AS payload
           FROM ({query}) q;
         DROP TABLE floor"
    ))
    .unwrap();
    let floor = t.elapsed().as_secs_f64();
    table.push(Row {
        what: format!("planning {n} rows: first run vs its physical floor"),
        value: first_run,
        baseline: floor,
        unit: "s",
        note: "floor: CREATE TABLE AS SELECT key, payload (logged, no index); target at most 2x".into(),
    });
    growth.push((n, first_run));
    for (rows, took) in growth {
        table.push(Row {
            what: format!("planning growth: first run, {rows} rows"),
            value: took / rows as f64 * 100_000.0,
            baseline: first_run / n as f64 * 100_000.0,
            unit: "s",
            note: format!("seconds per 100k rows vs at {n} rows ({took:.2} s in all); 1.00x is linear"),
        });
    }
}

/// What one delivery measurement saw.
struct Delivered {
    /// Records per second from the commit that queued them to the last outcome.
    rate: f64,
    /// The worker's peak private memory, in bytes.
    peak: u64,
    /// CPU seconds per 100,000 records: the worker, and the rest of the cluster.
    worker_cpu: f64,
    postgres_cpu: f64,
}

/// Records per second delivered to the emulator at 20 ms a request, with several
/// settings side by side; then the same while draining a large queue, with the worker's
/// memory and the CPU it and Postgres spent.
fn delivery(n: i64, drain: i64, bound_only: bool, table: &mut Vec<Row>) {
    let cluster = Cluster::start("bench-deliver", &["shared_preload_libraries = 'vitally_sync'", "vitally.database = 'bench'"]);
    cluster.admin("postgres").batch_execute("CREATE DATABASE bench").unwrap();
    let mut db = cluster.admin("bench");
    db.batch_execute("SET client_min_messages = error; CREATE EXTENSION vitally_sync").unwrap();
    eventually("the worker", Duration::from_secs(30), || cluster.log().contains("extension found in database \"bench\"").then_some(()));
    let vitally = Emulator::spawn(
        "127.0.0.1:0",
        Config { record_received: false, faults: Faults { latency_ms: 20, ..Faults::default() }, ..Config::default() },
    )
    .unwrap();
    db.execute("SELECT vitally.create_destination('d', analytics_api_key => 'test-analytics-key', analytics_url => $1)", &[&vitally.analytics_url()])
        .unwrap();
    let mut reloads = 0;
    let mut configure = |db: &mut Client, batch: i32, concurrency: i32| {
        db.batch_execute(&format!("ALTER SYSTEM SET vitally.batch_size = {batch}")).unwrap();
        db.batch_execute(&format!("ALTER SYSTEM SET vitally.max_concurrency = {concurrency}")).unwrap();
        db.batch_execute("SELECT pg_reload_conf()").unwrap();
        reloads += 1;
        eventually("the reload", Duration::from_secs(30), || (cluster.log().matches("settings reloaded").count() >= reloads).then_some(()));
    };
    let postmaster = cluster.postmaster_pid();
    let measure = |db: &mut Client, name: &str, rows: i64| -> Delivered {
        db.batch_execute(&format!(
            "CREATE TABLE {name} AS SELECT '{name}_' || g AS id, 'Account ' || g AS name, g % 50 AS seats FROM generate_series(1, {rows}) g;
             SELECT vitally.create_sync('{name}', 'd', 'account', 'upsert', 'SELECT * FROM {name}', 'id');"
        ))
        .unwrap();
        let worker: i32 = scalar(db, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'vitally_sync worker'");
        let sampler = memory::Sampler::start(worker);
        // Planned and committed with the worker held off by nothing: the records are
        // due at once, so the CPU from here on is the delivery's.
        let run: i64 = scalar(db, &format!("SELECT vitally.sync('{name}')"));
        let before = cpu::snapshot(postmaster, worker);
        let status: String = scalar(db, &format!("SELECT vitally.wait({run}, timeout => '1 hour')"));
        let after = cpu::snapshot(postmaster, worker);
        let peak = sampler.stop();
        assert_eq!(status, "succeeded");
        // From the commit that queued the records (planning done) to the last outcome.
        let took: f64 = scalar(db, &format!("SELECT EXTRACT(epoch FROM finished_at - planned_at)::float8 FROM vitally.sync_runs WHERE id = {run}"));
        let per = 100_000.0 / rows as f64;
        Delivered {
            rate: rows as f64 / took,
            peak,
            worker_cpu: (after.worker - before.worker) * per,
            postgres_cpu: (after.postgres - before.postgres) * per,
        }
    };

    configure(&mut db, 100, 4);
    // What HTTP to the emulator allows here, without Postgres: the ceiling the worker's
    // delivery rows can be read against.
    table.push(Row {
        what: "the client alone at 20 ms, batch 100, concurrency 4".into(),
        value: transport::client_alone(n as usize),
        baseline: 100.0 * 4.0 / 0.020,
        unit: "/s",
        note: format!("{n} messages sent as the worker sends them, no Postgres: what HTTP to the emulator allows on this machine"),
    });
    if bound_only {
        for i in 1..=env("BENCH_REPEAT", 5) {
            let here = cpu::own();
            let d = measure(&mut db, &format!("bound_{i}"), n);
            table.push(Row {
                what: format!("delivery at 20 ms, batch 100, concurrency 4 vs bound ({i})"),
                value: d.rate,
                baseline: 100.0 * 4.0 / 0.020,
                unit: "/s",
                note: format!(
                    "CPU per 100k: worker {:.2} s, Postgres {:.2} s, this process (the emulator) {:.2} s",
                    d.worker_cpu,
                    d.postgres_cpu,
                    (cpu::own() - here) * 100_000.0 / n as f64
                ),
            });
        }
        return;
    }
    let batch100 = measure(&mut db, "b100", n);
    configure(&mut db, 1, 4);
    let batch1 = measure(&mut db, "b1", (n / 20).max(200));
    configure(&mut db, 100, 1);
    let conc1 = measure(&mut db, "c1", n);
    table.push(Row {
        what: "delivery at 20 ms a request: batch 100 vs batch 1".into(),
        value: batch100.rate,
        baseline: batch1.rate,
        unit: "/s",
        note: "records per second from queued to all delivered; max_concurrency 4".into(),
    });
    table.push(Row {
        what: "delivery at 20 ms: max_concurrency 4 vs 1".into(),
        value: batch100.rate,
        baseline: conc1.rate,
        unit: "/s",
        note: "records per second; batch_size 100".into(),
    });
    table.push(Row {
        what: "delivery at 20 ms, batch 100, concurrency 4 vs bound".into(),
        value: batch100.rate,
        baseline: 100.0 * 4.0 / 0.020,
        unit: "/s",
        note: format!("{n} records; the bound is 100 records x 4 requests / 20 ms; target at least 0.80x"),
    });
    // Ten runs of one 100,000-row sync with 10% changed each time, delivered by the
    // worker: what the queue takes per record it keeps (history included) stays the same
    // when autovacuum sees the worker's updates.
    configure(&mut db, 100, 4);
    db.batch_execute(
        "CREATE TABLE ten AS SELECT 'ten_' || g AS id, g % 50 AS seats FROM generate_series(1, 100000) g;
         SELECT vitally.create_sync('ten', 'd', 'account', 'upsert', 'SELECT * FROM ten', 'id');",
    )
    .unwrap();
    let per_record = |db: &mut Client| -> (f64, i64) {
        let bytes: i64 = scalar(db, "SELECT pg_total_relation_size('vitally.record')");
        let rows: i64 = scalar(db, "SELECT count(*) FROM vitally.record");
        (bytes as f64 / rows as f64, bytes)
    };
    let mut after_first = (0.0, 0);
    for i in 1..=10 {
        if i > 1 {
            db.batch_execute(&format!("UPDATE ten SET seats = seats + 1 WHERE (abs(hashtext(id)) + {i}) % 10 = 0")).unwrap();
        }
        let run: i64 = scalar(&mut db, "SELECT vitally.sync('ten')");
        let status: String = scalar(&mut db, &format!("SELECT vitally.wait({run}, timeout => '1 hour')"));
        assert_eq!(status, "succeeded");
        if i == 1 {
            after_first = per_record(&mut db);
        }
    }
    let after_ten = per_record(&mut db);
    table.push(Row {
        what: "queue bytes per record kept: 10 runs vs 1".into(),
        value: after_ten.0,
        baseline: after_first.0,
        unit: "B",
        note: format!(
            "vitally.record with its indexes: {:.1} MB after one 100k-row run, {:.1} MB after ten (10% changed each)",
            after_first.1 as f64 / 1048576.0,
            after_ten.1 as f64 / 1048576.0
        ),
    });

    let mut drained = None;
    for size in [100_000, 300_000].into_iter().filter(|&k| k < drain).chain([drain]) {
        let d = measure(&mut db, &format!("drain_{size}"), size);
        table.push(Row {
            what: format!("delivery draining {size} vs {n} queued"),
            value: d.rate,
            baseline: batch100.rate,
            unit: "/s",
            note: "records per second, same settings; the growth: target at least 0.90x".into(),
        });
        drained = Some(d);
    }
    let drained = drained.expect("the drain ran");
    for (label, d) in [(format!("{n} queued"), &batch100), (format!("{drain} queued"), &drained)] {
        table.push(Row {
            what: format!("CPU per 100k delivered, {label}: worker"),
            value: d.worker_cpu,
            baseline: d.worker_cpu + d.postgres_cpu,
            unit: "s",
            note: format!("of worker + Postgres processes ({:.2} s); from /proc", d.worker_cpu + d.postgres_cpu),
        });
    }
    table.push(Row {
        what: format!("worker draining {drain} queued records"),
        value: drained.peak as f64 / 1048576.0,
        baseline: memory::rss_anon_of_idle_worker(&cluster) as f64 / 1048576.0,
        unit: "MB",
        note: format!("worker peak private memory vs idle; {:.0} records/s", drained.rate),
    });
}

/// Update only under Vitally's REST limit, as the emulator enforces it (100 requests
/// per 10 s here): the share of the limit the worker uses, and how many 429s it got.
fn rest(n: i64, table: &mut Vec<Row>) {
    let cluster = Cluster::start("bench-rest", &["shared_preload_libraries = 'vitally_sync'", "vitally.database = 'bench'"]);
    cluster.admin("postgres").batch_execute("CREATE DATABASE bench").unwrap();
    let mut db = cluster.admin("bench");
    db.batch_execute("SET client_min_messages = error; CREATE EXTENSION vitally_sync").unwrap();
    let (limit, window) = (100u32, Duration::from_secs(10));
    let vitally =
        Emulator::spawn("127.0.0.1:0", Config { rest_limit: limit, rest_window: window, record_received: false, ..Config::default() }).unwrap();
    for i in 1..=n {
        vitally.seed("accounts", &format!("a{i}"), serde_json::json!({}));
    }
    db.execute("SELECT vitally.create_destination('d', rest_api_key => 'test-rest-token', rest_url => $1)", &[&vitally.rest_url()]).unwrap();
    db.batch_execute(&format!(
        "CREATE TABLE accounts AS SELECT 'a' || g AS id, g % 50 AS seats FROM generate_series(1, {n}) g;
         SELECT vitally.create_sync('accounts', 'd', 'account', 'update_only', 'SELECT * FROM accounts', 'id');"
    ))
    .unwrap();
    let run: i64 = scalar(&mut db, "SELECT vitally.sync('accounts')");
    let status: String = scalar(&mut db, &format!("SELECT vitally.wait({run}, timeout => '1 hour')"));
    let took: f64 = scalar(&mut db, &format!("SELECT EXTRACT(epoch FROM finished_at - planned_at)::float8 FROM vitally.sync_runs WHERE id = {run}"));
    let failed: i64 = scalar(&mut db, &format!("SELECT records_failed FROM vitally.sync_runs WHERE id = {run}"));
    let counters = vitally.counters();
    table.push(Row {
        what: format!("update only, {n} records, limit {limit} per {}s", window.as_secs()),
        value: counters.rest_requests as f64 / took,
        baseline: limit as f64 / window.as_secs_f64(),
        unit: "/s",
        note: format!("REST requests per second vs the limit; run {status}, {failed} failed, {} answered 429", counters.rate_limited),
    });
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    format!("{cpus} cores, {:.0} GiB, PostgreSQL 15, release build", mem as f64 / 1048576.0)
}
