//! End-to-end tests against a real PostgreSQL 15 cluster with vitally_sync preloaded.
//!
//! One cluster serves every scenario (each scenario uses names of its own); it is
//! started before the first and stopped after the last. Scenarios live in
//! `scenarios/`, one topic per file, numbered in the order a reader should meet them.

use libtest_mimic::{Arguments, Trial};
use std::sync::OnceLock;
use vitally_e2e::Cluster;

mod scenarios;

/// The database the worker serves in every test cluster.
pub const APP_DB: &str = "app";

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

pub fn cluster() -> &'static Cluster {
    CLUSTER.get().expect("cluster is started in main")
}

fn main() {
    let args = Arguments::from_args();
    let trials: Vec<Trial> = scenarios::all();
    let wants_any = trials.iter().any(|t| !args.is_filtered_out(t)) && !args.list;
    if wants_any {
        let cluster = Cluster::start(
            "main",
            &[
                "shared_preload_libraries = 'vitally_sync, pg_cron'",
                "cron.database_name = 'app'",
                // Jobs run in background workers: no connection settings to get right.
                "cron.use_background_workers = on",
                "max_worker_processes = 16",
                "vitally.database = 'app'",
                "log_min_messages = info",
                // Retries come back in a tenth of the default wait, so storms end sooner.
                "vitally.retry_min_delay = '100ms'",
            ],
        );
        cluster.admin("postgres").batch_execute("CREATE DATABASE app").unwrap();
        cluster.admin(APP_DB).batch_execute("CREATE EXTENSION vitally_sync; CREATE EXTENSION pg_cron").unwrap();
        let _ = CLUSTER.set(cluster);
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(cluster) = CLUSTER.get() {
        if conclusion.has_failed() {
            eprintln!("---- server log ----\n{}", tail(&cluster.log(), 80));
        }
        cluster.stop();
        if std::env::var_os("VITALLY_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&cluster.dir);
        }
    }
    conclusion.exit();
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
