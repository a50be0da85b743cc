//! Peak private memory of a process, sampled from /proc while something runs.
//! (VmHWM would count the shared buffers a backend touches; RssAnon does not.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

pub fn rss_anon(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("RssAnon:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

impl Sampler {
    pub fn start(pid: i32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_anon(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak.max(rss_anon(pid))
        });
        Sampler { stop, handle }
    }

    /// The highest value seen, in bytes.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// The worker's private memory when it has nothing to do.
pub fn rss_anon_of_idle_worker(cluster: &vitally_e2e::Cluster) -> u64 {
    let pid: i32 = vitally_e2e::scalar(&mut cluster.admin("bench"), "SELECT pid FROM pg_stat_activity WHERE backend_type = 'vitally_sync worker'");
    rss_anon(pid)
}
