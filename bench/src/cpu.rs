//! CPU seconds from /proc: less moved by latency and by what else the machine does than
//! records per second are.

/// User plus system seconds of a process; with `children`, also of its children that
/// have exited and been waited for (autovacuum workers, for the postmaster).
fn seconds(pid: i32, children: bool) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // utime, stime, cutime, cstime are fields 14..17 of stat: 12..15 after the command.
    let ticks = f[11] + f[12] + if children { f[13] + f[14] } else { 0.0 };
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds so far of one process (the worker) and of the rest of its cluster: the
/// postmaster, its children alive and those gone.
pub struct Snapshot {
    pub worker: f64,
    pub postgres: f64,
}

pub fn snapshot(postmaster: i32, worker: i32) -> Snapshot {
    let mut postgres = seconds(postmaster, true);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid != worker && parent_of(pid) == Some(postmaster) {
            postgres += seconds(pid, false);
        }
    }
    Snapshot { worker: seconds(worker, false), postgres }
}

/// CPU seconds so far of this process (the bench, with the emulator it runs).
pub fn own() -> f64 {
    seconds(std::process::id() as i32, false)
}
