//! Process figures from `/proc`: CPU seconds and resident memory of a process.

use std::time::Instant;

/// Linux reports CPU times in clock ticks of `USER_HZ`, 100 on every mainstream architecture.
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) of process `pid` (`None`: this process), or `None` if it is gone.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let s = std::fs::read_to_string(path).ok()?;
    parse_stat_cpu(&s)
}

/// utime + stime from the text of `/proc/<pid>/stat`, in seconds.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at indexes 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Resident memory of `pid` in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Open file descriptors of `pid` (entries of `/proc/<pid>/fd`; needs the same user or root).
pub fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Threads of `pid` (`Threads:` of `/proc/<pid>/status`).
pub fn threads(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Threads:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The machine's one-minute load average (`/proc/loadavg`).
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// The only process whose command name is `name`, if exactly one exists.
pub fn find_process(name: &str) -> Option<u32> {
    let mut found = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if comm.trim() == name {
            if found.is_some() {
                return None;
            }
            found = Some(pid);
        }
    }
    found
}

/// Busy and total jiffies of the whole machine since boot, from `/proc/stat`.
pub fn machine_cpu() -> Option<(u64, u64)> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Busy and total jiffies from the first (`cpu `) line of `/proc/stat`; idle and iowait are not busy.
pub fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
}

/// Number of CPUs available to this process.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// CPU use of a process between two samples, in percent of one core.
#[derive(Debug, Clone, Copy)]
pub struct CpuSampler {
    pid: Option<u32>,
    last: Option<(Instant, f64)>,
}

impl CpuSampler {
    /// A sampler for `pid` (`None`: this process).
    pub fn new(pid: Option<u32>) -> Self {
        CpuSampler {
            pid,
            last: cpu_seconds(pid).map(|c| (Instant::now(), c)),
        }
    }

    /// Percent of one core since the previous sample (`None` if the process is gone).
    pub fn sample(&mut self) -> Option<f64> {
        let now = Instant::now();
        let c = cpu_seconds(self.pid)?;
        let pct = match self.last {
            Some((t, c0)) => {
                let dt = now.duration_since(t).as_secs_f64();
                if dt > 0.0 { (c - c0) / dt * 100.0 } else { 0.0 }
            }
            None => 0.0,
        };
        self.last = Some((now, c));
        Some(pct)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 50";
        assert_eq!(parse_stat_cpu(line), Some(3.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn machine_stat() {
        assert_eq!(
            parse_proc_stat("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 1 1 1 1 1\n"),
            Some((20, 100))
        );
        assert_eq!(parse_proc_stat("intr 1 2"), None);
        assert!(machine_cpu().is_some());
    }

    #[test]
    fn this_process_is_measurable() {
        assert!(cpu_seconds(None).is_some());
        assert!(alive(std::process::id()));
        assert!(rss_mib(std::process::id()).unwrap() > 0.0);
        // The test harness runs this on a thread of its own and holds at least stdin/stdout/stderr.
        assert!(threads(std::process::id()).unwrap() >= 1);
        assert!(
            fd_count(std::process::id()).unwrap() >= 3,
            "stdin, stdout, stderr at least"
        );
        assert!(fd_count(std::process::id() + 1_000_000_000).is_none());
    }
}
