//! A throwaway PostgreSQL 15 cluster for end-to-end tests, run as the `postgres` OS
//! user when the tests run as root (initdb refuses root).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use postgres::{Client, NoTls};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// `vitally.allowed_hosts` in test clusters: Vitally's hosts and loopback.
pub const LOOPBACK_HOSTS: &str = "*.vitally.io, *.vitally-eu.io, 127.0.0.1, localhost, ::1";

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a Postgres program, as `postgres` when we are root.
fn pg_command(program: &str) -> Command {
    let path = format!("{PG_BIN}/{program}");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An empty directory for a cluster, owned by `postgres` when we are root.
fn cluster_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vitally-e2e-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    if is_root() {
        let mut c = Command::new("chown");
        c.args(["postgres:postgres", dir.to_str().unwrap()]);
        run(c, "chown");
    }
    dir
}

/// Adds lines to a cluster's `postgresql.conf` (later lines win).
fn append_conf(data: &Path, settings: &[impl AsRef<str>]) {
    let conf_path = data.join("postgresql.conf");
    let mut text = fs::read_to_string(&conf_path).unwrap();
    text.push_str("\n# vitally-e2e\n");
    for line in settings {
        text.push_str(line.as_ref());
        text.push('\n');
    }
    fs::write(&conf_path, text).unwrap();
}

impl Cluster {
    /// Creates and starts a cluster named `name` with extra `postgresql.conf` lines.
    pub fn start(name: &str, conf: &[&str]) -> Cluster {
        let dir = cluster_dir(name);
        let data = dir.join("data");
        let mut initdb = pg_command("initdb");
        initdb.args(["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        run(initdb, "initdb");

        let port = free_port();
        let mut settings = vec![
            format!("port = {port}"),
            "listen_addresses = '127.0.0.1'".into(),
            format!("unix_socket_directories = '{}'", dir.display()),
            "fsync = off".into(),
            "max_connections = 50".into(),
            // The emulator listens on loopback: tests allow it, as the demo does.
            format!("vitally.allowed_hosts = '{LOOPBACK_HOSTS}'"),
        ];
        settings.extend(conf.iter().map(|s| s.to_string()));
        append_conf(&data, &settings);
        let cluster = Cluster { dir, port };
        cluster.pg_ctl_start();
        cluster
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`), started, on a port and in
    /// a directory of its own; it keeps the primary's settings.
    pub fn standby(&self, name: &str) -> Cluster {
        let dir = cluster_dir(name);
        let data = dir.join("data");
        let mut backup = pg_command("pg_basebackup");
        let port = self.port.to_string();
        backup.args(["-D", data.to_str().unwrap(), "-R", "-X", "stream", "-h", "127.0.0.1", "-p", &port, "-U", "postgres"]);
        run(backup, "pg_basebackup");
        let port = free_port();
        append_conf(&data, &[format!("port = {port}"), format!("unix_socket_directories = '{}'", dir.display())]);
        let cluster = Cluster { dir, port };
        cluster.pg_ctl_start();
        cluster
    }

    /// Ends a standby's recovery: it becomes a primary.
    pub fn promote(&self) {
        let mut c = pg_command("pg_ctl");
        c.args(["-D", self.data_dir().to_str().unwrap(), "-w", "promote"]);
        run(c, "pg_ctl promote");
    }

    /// A cluster of its own with the worker serving database `app`, where the extension
    /// is installed; `conf` adds or overrides settings.
    pub fn with_worker(name: &str, conf: &[&str]) -> Cluster {
        let mut settings = vec!["shared_preload_libraries = 'vitally_sync'", "vitally.database = 'app'", "vitally.retry_min_delay = '100ms'"];
        settings.extend_from_slice(conf);
        let cluster = Cluster::start(name, &settings);
        cluster.admin("postgres").batch_execute("CREATE DATABASE app").unwrap();
        cluster.admin("app").batch_execute("CREATE EXTENSION vitally_sync").unwrap();
        cluster
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn pg_ctl_start(&self) {
        let mut c = pg_command("pg_ctl");
        c.args(["-D", self.data_dir().to_str().unwrap(), "-l", self.log_path().to_str().unwrap(), "-w", "-t", "60", "start"]);
        run(c, "pg_ctl start");
    }

    /// The whole server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn connect(&self, db: &str, user: &str) -> Client {
        Client::connect(&format!("host=127.0.0.1 port={} dbname={db} user={user}", self.port), NoTls)
            .unwrap_or_else(|e| panic!("connect to {db} as {user}: {e}"))
    }

    /// A superuser connection.
    pub fn admin(&self, db: &str) -> Client {
        self.connect(db, "postgres")
    }

    /// A connection that keeps the NOTICEs and WARNINGs it receives.
    pub fn connect_with_notices(&self, db: &str, user: &str) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = notices.clone();
        let client = format!("host=127.0.0.1 port={} dbname={db} user={user}", self.port)
            .parse::<postgres::Config>()
            .unwrap()
            .notice_callback(move |n| kept.lock().unwrap().push(n.message().to_string()))
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connect to {db}: {e}"));
        (client, notices)
    }

    /// Runs one of PostgreSQL's programs (pg_dump, pg_restore, ...) against this
    /// cluster as the superuser; panics with its output when it fails.
    pub fn program(&self, program: &str, args: &[&str]) {
        let mut c = pg_command(program);
        let port = self.port.to_string();
        c.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"]).args(args);
        run(c, program);
    }

    /// The postmaster's pid, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> i32 {
        fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            .expect("postmaster.pid")
    }

    /// Sends SIGKILL to a process of the cluster.
    pub fn kill9(&self, pid: i32) {
        let status = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        assert!(status.success(), "kill -9 {pid}");
    }

    /// Starts the cluster again after a crash or a stop, once the old processes are gone.
    pub fn start_again(&self) {
        eventually("the cluster to start again", Duration::from_secs(60), || {
            let mut c = pg_command("pg_ctl");
            c.args(["-D", self.data_dir().to_str().unwrap(), "-l", self.log_path().to_str().unwrap(), "-w", "-t", "60", "start"]);
            c.stdin(Stdio::null()).output().ok().filter(|o| o.status.success()).map(|_| ())
        });
    }

    /// A fast shutdown (SIGINT to the postmaster), as `pg_ctl stop -m fast` does.
    pub fn stop_fast(&self) {
        let mut c = pg_command("pg_ctl");
        c.args(["-D", self.data_dir().to_str().unwrap(), "-m", "fast", "-w", "stop"]);
        run(c, "pg_ctl stop -m fast");
    }

    pub fn stop(&self) {
        let mut c = pg_command("pg_ctl");
        c.args(["-D", self.data_dir().to_str().unwrap(), "-m", "fast", "-w", "stop"]);
        let _ = c.stdin(Stdio::null()).output();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("VITALLY_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The SQLSTATE, message and hint of a failed statement.
pub struct SqlError {
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

pub fn sql_error(result: Result<impl Sized, postgres::Error>) -> SqlError {
    let err = match result {
        Ok(_) => panic!("statement succeeded, an error was expected"),
        Err(e) => e,
    };
    let db = err.as_db_error().unwrap_or_else(|| panic!("not a server error: {err}"));
    SqlError { code: db.code().code().to_string(), message: db.message().to_string(), hint: db.hint().map(str::to_string) }
}

/// Creates a database with the extension in it.
pub fn fresh_database(cluster: &Cluster, name: &str) -> Client {
    let mut admin = cluster.admin("postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let mut client = cluster.admin(name);
    client.batch_execute("CREATE EXTENSION vitally_sync").unwrap();
    client
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// One value from a query.
pub fn scalar<T: for<'a> postgres::types::FromSql<'a>>(db: &mut Client, sql: &str) -> T {
    db.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// How many records a run queued.
pub fn records_queued(db: &mut Client, run: i64) -> i64 {
    scalar(db, &format!("SELECT records_queued FROM vitally.sync_runs WHERE id = {run}"))
}

/// The queue's own statements (src/queue/statements.rs), so that tests move records
/// through the transitions the worker makes, not through a copy of them.
#[path = "../../../src/queue/statements.rs"]
pub mod queue_statements;

/// Records every pending record of a sync as delivered, with the statements the worker
/// runs when Vitally accepts them (for tests of planning alone). Superuser only.
pub fn deliver_by_hand(db: &mut Client, sync: &str) -> u64 {
    let pending = db
        .query(
            "SELECT r.id, r.version, s.destination_id FROM vitally.record r JOIN vitally.sync s ON s.id = r.sync_id
              WHERE s.name = $1 AND r.status = 'pending'",
            &[&sync],
        )
        .unwrap();
    let ids: Vec<i64> = pending.iter().map(|r| r.get(0)).collect();
    let versions: Vec<i32> = pending.iter().map(|r| r.get(1)).collect();
    let destinations: Vec<i64> = pending.iter().map(|r| r.get(2)).collect();
    let n = ids.len();
    let outcomes = db
        .query(
            queue_statements::RECORD_OUTCOMES,
            &[
                &ids,
                &versions,
                &vec!["delivered"; n],
                &vec![1i32; n],
                &vec![0f64; n],
                &vec![Some(200i32); n],
                &vec![None::<String>; n],
                &destinations,
            ],
        )
        .unwrap();
    let runs: Vec<i64> = outcomes.iter().map(|r| r.get(1)).collect();
    db.query(queue_statements::FINISH_RUNS, &[&runs]).unwrap();
    outcomes.len() as u64
}

/// A destination with both keys, pointing at a port where nothing listens.
pub fn destination(db: &mut Client, name: &str) {
    db.batch_execute(&format!(
        "SELECT vitally.create_destination('{name}', analytics_api_key => 'ak', rest_api_key => 'rk',
                analytics_url => 'http://127.0.0.1:9/analytics/v1', rest_url => 'http://127.0.0.1:9/resources')"
    ))
    .unwrap();
}

pub use vitally_emulator::{Config as EmulatorConfig, Emulator, Faults};

/// Starts an emulator on a free loopback port with its own thread and runtime.
pub fn emulator(faults: Faults) -> Emulator {
    Emulator::spawn("127.0.0.1:0", EmulatorConfig { faults, ..EmulatorConfig::default() }).expect("emulator starts")
}

/// A destination pointing at `emulator`, with the keys it accepts.
pub fn emulator_destination(db: &mut Client, name: &str, emulator: &Emulator) {
    db.execute(
        "SELECT vitally.create_destination($1, analytics_api_key => 'test-analytics-key', rest_api_key => 'test-rest-token',
                analytics_url => $2, rest_url => $3)",
        &[&name, &emulator.analytics_url(), &emulator.rest_url()],
    )
    .unwrap();
}

/// Runs a sync and waits for its run to finish; returns the run's status.
pub fn sync_and_wait(db: &mut Client, sync: &str, seconds: u32) -> String {
    let run: i64 = scalar(db, &format!("SELECT vitally.sync('{sync}')"));
    scalar(db, &format!("SELECT vitally.wait({run}, timeout => '{seconds} seconds')"))
}

/// Starts an emulator with a configuration of its own (keys, REST limit, faults).
pub fn emulator_with(config: EmulatorConfig) -> Emulator {
    Emulator::spawn("127.0.0.1:0", config).expect("emulator starts")
}
