//! Reads a server's CPU time, resident memory and open files from /proc.
#![forbid(unsafe_code)]

use std::fs;

/// One reading of a process's cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// utime + stime, ns.
    pub cpu_ns: u64,
    pub rss_bytes: u64,
    pub fds: Option<u64>,
}

/// utime + stime in clock ticks from the text of /proc/PID/stat.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in bytes from the text of /proc/PID/status.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Reads `pid`'s current cost; `None` when the process is gone.
pub fn sample(pid: u32, ticks_per_s: u64) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ticks = parse_stat_ticks(&stat)?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64);
    Some(Sample {
        cpu_ns: ticks * 1_000_000_000 / ticks_per_s.max(1),
        rss_bytes: parse_status_rss(&status).unwrap_or(0),
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "1234 (ring cast) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 100000 500";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tringcast\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(status), Some(2048 * 1024));
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id(), crate::sys::clock_ticks()).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.fds.unwrap() > 0);
    }
}
