//! `ringcast doctor`: what on this host limits ringcast, and how to fix it.
//!
//! Split like the protocol modules: [`gather_facts`] reads the host
//! (`/proc/self/limits`, `/proc/sys`, the CPU affinity mask, and a real
//! io_uring ring) into a plain [`HostFacts`]; [`checks`] is a pure function
//! from the configuration and those facts to a list of [`Check`]s, each with
//! what was found, what the configured target needs and the exact fix
//! (a sysctl line, `ulimit`, or a systemd unit setting). [`run`] glues the
//! two together for the `doctor` subcommand, prints the table and returns
//! the exit code: 0 when nothing blocks the configured target, 1 otherwise.
//!
//! No `unsafe` and no libc here: everything is read from procfs, the
//! affinity mask comes from `core_affinity`, the ring from `io-uring`.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::ops::config::{Config, DriverKind};

/// Connections assumed when `limits.max_connections` is 0 (unbounded): the
/// checks then compare against this and only warn.
pub const DEFAULT_TARGET_CONNECTIONS: u64 = 10_000;
/// File descriptors ringcast needs besides client sockets: stdio, the
/// backend port and its clients, logs.
pub const FD_HEADROOM: u64 = 64;
/// File descriptors per shard besides client sockets: the listener, the
/// io_uring fd, the wake-up eventfd, a few spare.
pub const FD_PER_SHARD: u64 = 8;
/// io_uring submission queue entries per shard: the size the shards
/// really create (`runtime::start`).
pub use crate::runtime::start::SHARD_RING_ENTRIES as RING_ENTRIES;
/// Kernel memory pinned by one idle TCP socket (socket, inode, dentry,
/// file, tcp_sock slabs), in bytes. See tuning/README.md.
pub const KERNEL_BYTES_PER_IDLE_SOCKET: u64 = 3_584;
/// Socket buffer memory budgeted per connection for `net.ipv4.tcp_mem`:
/// one page of data in flight per connection.
pub const TCP_MEM_BYTES_PER_CONNECTION: u64 = 4_096;
/// Ephemeral port range size that `tuning/` sets (1024-65535 is 64,512);
/// narrower ranges warn when a local load generator would need more than
/// one source address for the target.
pub const WIDE_PORT_RANGE: u64 = 60_000;
/// Per-socket default buffer sizes above which idle-heavy loads waste memory.
pub const SMALL_SOCKET_BUFFER: u64 = 16_384;
/// Targets at or above this count are "many connections" for the buffer
/// size advice.
pub const MANY_CONNECTIONS: u64 = 100_000;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Limits scale or performance, but the configured target is reachable.
    Warn,
    /// Blocks the configured target; `doctor` exits 1.
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the doctor's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What is checked: an rlimit, a sysctl key, `io_uring`, `cpus`.
    pub name: &'static str,
    pub status: Status,
    /// What the host has now.
    pub found: String,
    /// What the configured target needs.
    pub need: String,
    /// The exact fix; empty when `status` is `Ok`.
    pub fix: String,
}

impl Check {
    /// A finding of any status; `fix` is the exact fix (empty for `Ok`).
    pub fn new(
        name: &'static str,
        status: Status,
        found: impl Into<String>,
        need: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status,
            found: found.into(),
            need: need.into(),
            fix: fix.into(),
        }
    }

    /// Nothing to do.
    pub fn ok(name: &'static str, found: impl Into<String>, need: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, found, need, "")
    }

    /// Limits scale or performance; `fix` says how to lift it.
    pub fn warn(
        name: &'static str,
        found: impl Into<String>,
        need: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(name, Status::Warn, found, need, fix)
    }
}

/// A resource limit; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

impl Rlimit {
    pub const UNLIMITED: Rlimit = Rlimit {
        soft: None,
        hard: None,
    };
}

/// Result of creating a real io_uring instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UringProbe {
    Available,
    /// `io_uring_setup` failed with this errno (when known) and message.
    Unavailable {
        errno: Option<i32>,
        message: String,
    },
}

/// Everything the checks look at, read from the host by [`gather_facts`]
/// or written by hand in tests. `None` means "could not be read / absent".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `RLIMIT_NOFILE`.
    pub nofile: Option<Rlimit>,
    /// `RLIMIT_MEMLOCK`, bytes.
    pub memlock: Option<Rlimit>,
    /// `kernel.osrelease` as (major, minor).
    pub kernel: Option<(u32, u32)>,
    /// CPUs in the process's affinity mask.
    pub cpus: usize,
    pub io_uring: UringProbe,
    /// `kernel.io_uring_disabled` (absent before Linux 6.6).
    pub io_uring_disabled: Option<u64>,
    /// `Seccomp:` mode from /proc/self/status (0 none, 1 strict, 2 filter).
    pub seccomp: Option<u64>,
    pub page_size: u64,
    pub fs_nr_open: Option<u64>,
    pub fs_file_max: Option<u64>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    /// `net.ipv4.ip_local_port_range` (low, high).
    pub ip_local_port_range: Option<(u64, u64)>,
    /// `net.ipv4.tcp_mem`, pages: min, pressure, max.
    pub tcp_mem: Option<[u64; 3]>,
    /// `net.ipv4.tcp_rmem`, bytes: min, default, max.
    pub tcp_rmem: Option<[u64; 3]>,
    /// `net.ipv4.tcp_wmem`, bytes: min, default, max.
    pub tcp_wmem: Option<[u64; 3]>,
    /// `net.netfilter.nf_conntrack_max`; `None` when conntrack is not loaded.
    pub nf_conntrack_max: Option<u64>,
    pub netdev_max_backlog: Option<u64>,
}

impl HostFacts {
    /// A well-tuned host with nothing limiting: a starting point for tests.
    pub fn roomy() -> HostFacts {
        HostFacts {
            nofile: Some(Rlimit {
                soft: Some(1 << 20),
                hard: Some(1 << 20),
            }),
            memlock: Some(Rlimit::UNLIMITED),
            kernel: Some((6, 8)),
            cpus: 8,
            io_uring: UringProbe::Available,
            io_uring_disabled: Some(0),
            seccomp: Some(0),
            page_size: 4096,
            fs_nr_open: Some(1 << 21),
            fs_file_max: Some(1 << 22),
            somaxconn: Some(65_535),
            tcp_max_syn_backlog: Some(65_535),
            ip_local_port_range: Some((1024, 65_535)),
            tcp_mem: Some([786_432, 1_048_576, 1_572_864]),
            tcp_rmem: Some([4096, 16_384, 16 << 20]),
            tcp_wmem: Some([4096, 16_384, 16 << 20]),
            nf_conntrack_max: None,
            netdev_max_backlog: Some(16_384),
        }
    }
}

/// What the configuration asks of the host, derived once from `Config` and
/// the CPU count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Connections to plan for.
    pub connections: u64,
    /// `true` when `max_connections` was set; `false` when the default
    /// target stands in for "unbounded" (findings then only warn).
    pub explicit: bool,
    /// Shards that will run (`shards = 0` resolved to the CPU count).
    pub shards: u64,
    pub backlog: u64,
    pub driver: DriverKind,
    /// The WebSocket port (`ws.listen`).
    pub port: u16,
}

impl Target {
    pub fn new(config: &Config, cpus: usize) -> Target {
        let max = config.limits.max_connections as u64;
        let shards = if config.shards == 0 {
            cpus.max(1)
        } else {
            config.shards
        };
        Target {
            connections: if max == 0 {
                DEFAULT_TARGET_CONNECTIONS
            } else {
                max
            },
            explicit: max != 0,
            shards: shards as u64,
            backlog: u64::from(config.ws.backlog),
            driver: config.driver,
            port: config.ws.listen.port(),
        }
    }

    /// File descriptors needed: connections plus headroom.
    pub fn fds(&self) -> u64 {
        self.connections + FD_HEADROOM + FD_PER_SHARD * self.shards
    }

    /// Status for a shortfall that blocks an explicit target.
    fn blocking(&self) -> Status {
        if self.explicit {
            Status::Fail
        } else {
            Status::Warn
        }
    }
}

/// Bytes of locked memory one io_uring instance with `entries` SQ entries
/// takes on kernels that charge rings to `RLIMIT_MEMLOCK` (before 5.12):
/// 64-byte SQEs, a 4-byte SQ index array, 16-byte CQEs (twice as many),
/// plus a page of ring header each for SQ and CQ, rounded to pages.
pub fn ring_bytes(entries: u32, page_size: u64) -> u64 {
    let e = u64::from(entries);
    let sq = 64 * e + 4 * e + page_size;
    let cq = 16 * 2 * e + page_size;
    let round = |b: u64| b.div_ceil(page_size) * page_size;
    round(sq) + round(cq)
}

fn fmt_limit(v: Option<u64>) -> String {
    match v {
        None => "unlimited".to_owned(),
        Some(v) => v.to_string(),
    }
}

fn fmt_bytes(b: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if b >= GIB {
        format!("{:.1} GiB", b as f64 / GIB as f64)
    } else if b >= MIB {
        format!("{:.1} MiB", b as f64 / MIB as f64)
    } else if b >= KIB {
        format!("{} KiB", b / KIB)
    } else {
        format!("{b} B")
    }
}

fn below(limit: Option<u64>, need: u64) -> bool {
    matches!(limit, Some(v) if v < need)
}

fn unread(name: &'static str, what: &str) -> Check {
    Check::warn(
        name,
        format!("could not read {what}"),
        "-",
        format!("check that {what} is readable (is /proc mounted?)"),
    )
}

/// Every check, in table order. Pure: same config and facts, same answer.
pub fn checks(config: &Config, facts: &HostFacts) -> Vec<Check> {
    let t = Target::new(config, facts.cpus);
    vec![
        check_nofile(&t, facts),
        check_nr_open(&t, facts),
        check_file_max(&t, facts),
        check_io_uring(&t, facts),
        check_memlock(&t, facts),
        check_cpus(config, &t, facts),
        check_somaxconn(&t, facts),
        check_syn_backlog(&t, facts),
        check_port_range(&t, facts),
        check_tcp_mem(&t, facts),
        check_socket_buffers(&t, facts),
        check_conntrack(&t, facts),
        check_netdev_backlog(&t, facts),
    ]
}

fn check_nofile(t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "open files (RLIMIT_NOFILE)";
    let Some(lim) = f.nofile else {
        return unread(NAME, "/proc/self/limits");
    };
    let need = t.fds();
    let want = need.next_power_of_two();
    let found = format!("soft {}, hard {}", fmt_limit(lim.soft), fmt_limit(lim.hard));
    let need_s = format!(
        ">= {need} ({} connections + {} spare)",
        t.connections,
        need - t.connections
    );
    if !below(lim.soft, need) {
        return Check::ok(NAME, found, need_s);
    }
    let fix = if below(lim.hard, need) {
        format!(
            "systemd: LimitNOFILE={want} in ringcast.service; shell (as root): \
             ulimit -Hn {want} && ulimit -Sn {want}; or /etc/security/limits.conf: \
             ringcast - nofile {want}"
        )
    } else {
        // The hard limit already allows it: raise the soft one, no further
        // than the hard limit.
        let soft = lim.hard.map_or(want, |h| want.min(h));
        format!("ulimit -n {soft} before starting; systemd: LimitNOFILE={soft}")
    };
    // Below the connection target, explicit or the default one: blocking.
    // The process cannot hold the connections it is sized for, and the
    // failure (EMFILE on accept) would come only under load.
    Check::new(NAME, Status::Fail, found, need_s, fix)
}

fn check_nr_open(t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "fs.nr_open";
    let need = t.fds();
    match f.fs_nr_open {
        None => unread(NAME, "/proc/sys/fs/nr_open"),
        Some(v) if v < need => Check::new(
            NAME,
            t.blocking(),
            format!("{v} (caps every process's hard limit)"),
            format!(">= {need}"),
            format!("sysctl -w fs.nr_open={}", need.next_power_of_two()),
        ),
        Some(v) => Check::ok(NAME, v.to_string(), format!(">= {need}")),
    }
}

fn check_file_max(t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "fs.file-max";
    let need = t.fds();
    match f.fs_file_max {
        None => unread(NAME, "/proc/sys/fs/file-max"),
        Some(v) if v < need => Check::new(
            NAME,
            t.blocking(),
            format!("{v} (system-wide open files)"),
            format!(">= {need}"),
            format!("sysctl -w fs.file-max={}", (2 * need).next_power_of_two()),
        ),
        Some(v) => Check::ok(NAME, v.to_string(), format!(">= {need}")),
    }
}

fn errno_meaning(errno: Option<i32>, f: &HostFacts) -> &'static str {
    const EPERM: i32 = 1;
    const ENOMEM: i32 = 12;
    const ENOSYS: i32 = 38;
    match errno {
        Some(EPERM) if f.io_uring_disabled.unwrap_or(0) > 0 => {
            "EPERM: disabled by kernel.io_uring_disabled"
        }
        Some(EPERM) => "EPERM: blocked by a seccomp filter or LSM (container runtime?)",
        Some(ENOSYS) if f.seccomp == Some(2) => {
            "ENOSYS: blocked by a seccomp filter (container runtime?)"
        }
        Some(ENOSYS) => "ENOSYS: kernel built without io_uring, or seccomp",
        Some(ENOMEM) => "ENOMEM: RLIMIT_MEMLOCK too small for the ring",
        _ => "io_uring_setup failed",
    }
}

fn check_io_uring(t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "io_uring";
    let disabled = match f.io_uring_disabled {
        Some(v) => format!("kernel.io_uring_disabled = {v}"),
        None => "kernel.io_uring_disabled absent".to_owned(),
    };
    let need = match t.driver {
        DriverKind::Uring => "a working ring (driver = uring)",
        DriverKind::Auto => "a ring, else epoll fallback (driver = auto)",
        DriverKind::Epoll => "nothing (driver = epoll)",
    }
    .to_owned();
    match &f.io_uring {
        UringProbe::Available => Check::ok(NAME, format!("ring created; {disabled}"), need),
        UringProbe::Unavailable { errno, message } => {
            let status = match t.driver {
                DriverKind::Uring => Status::Fail,
                DriverKind::Auto => Status::Warn,
                DriverKind::Epoll => Status::Ok,
            };
            let why = errno_meaning(*errno, f);
            let mut fix = match errno {
                Some(12) => "LimitMEMLOCK=infinity in ringcast.service, or ulimit -l unlimited",
                Some(1) if f.io_uring_disabled.unwrap_or(0) > 0 => {
                    "sysctl -w kernel.io_uring_disabled=0"
                }
                Some(1) | Some(38) => {
                    "allow io_uring_setup/io_uring_enter/io_uring_register in the seccomp \
                     profile (docker: --security-opt seccomp=<profile>), or set driver = \"epoll\""
                }
                _ => "use a kernel >= 5.11 with io_uring, or set driver = \"epoll\"",
            }
            .to_owned();
            if status == Status::Ok {
                fix.clear();
            }
            Check::new(
                NAME,
                status,
                format!("{why} ({message}); {disabled}"),
                need,
                fix,
            )
        }
    }
}

fn check_memlock(t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "locked memory (RLIMIT_MEMLOCK)";
    let Some(lim) = f.memlock else {
        return unread(NAME, "/proc/self/limits");
    };
    let need = t.shards * ring_bytes(RING_ENTRIES, f.page_size);
    let found = format!(
        "soft {}, hard {}",
        lim.soft.map_or("unlimited".to_owned(), fmt_bytes),
        lim.hard.map_or("unlimited".to_owned(), fmt_bytes)
    );
    let need_s = format!(
        ">= {} ({} rings x {} entries)",
        fmt_bytes(need),
        t.shards,
        RING_ENTRIES
    );
    let charged = match f.kernel {
        Some(k) => k < (5, 12),
        None => true,
    };
    if t.driver == DriverKind::Epoll || !below(lim.soft, need) {
        return Check::ok(NAME, found, need_s);
    }
    if !charged {
        // Since 5.12 rings are charged to the memory cgroup, not memlock;
        // only registered buffers still count.
        return Check::ok(
            NAME,
            format!("{found} (kernel >= 5.12 does not charge rings here)"),
            need_s,
        );
    }
    let status = if t.driver == DriverKind::Uring {
        Status::Fail
    } else {
        Status::Warn
    };
    Check::new(
        NAME,
        status,
        found,
        need_s,
        "LimitMEMLOCK=infinity in ringcast.service; shell (as root): ulimit -l unlimited",
    )
}

fn check_cpus(config: &Config, t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "cpus in affinity mask";
    let found = format!("{} usable", f.cpus);
    if config.shards == 0 {
        return Check::ok(
            NAME,
            found,
            format!("shards = 0 -> {} shards, one per CPU", t.shards),
        );
    }
    let need = format!(">= {} (shards = {})", t.shards, config.shards);
    if (f.cpus as u64) < t.shards {
        Check::warn(
            NAME,
            found,
            need,
            format!(
                "shards = {} (or 0 for one per CPU) in ringcast.toml, or widen the mask: \
                 CPUAffinity= in ringcast.service / taskset -c",
                f.cpus
            ),
        )
    } else {
        Check::ok(NAME, found, need)
    }
}

fn check_somaxconn(t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "net.core.somaxconn";
    let need = format!(">= {} (ws.backlog)", t.backlog);
    match f.somaxconn {
        None => unread(NAME, "/proc/sys/net/core/somaxconn"),
        Some(v) if v < t.backlog => Check::warn(
            NAME,
            format!("{v} (listen backlog silently capped to it)"),
            need,
            format!("sysctl -w net.core.somaxconn={}", t.backlog),
        ),
        Some(v) => Check::ok(NAME, v.to_string(), need),
    }
}

fn check_syn_backlog(t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "net.ipv4.tcp_max_syn_backlog";
    let need = format!(">= {} (ws.backlog)", t.backlog);
    match f.tcp_max_syn_backlog {
        None => unread(NAME, "/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        Some(v) if v < t.backlog => Check::warn(
            NAME,
            format!("{v} (half-open connections dropped past it in bursts)"),
            need,
            format!("sysctl -w net.ipv4.tcp_max_syn_backlog={}", t.backlog),
        ),
        Some(v) => Check::ok(NAME, v.to_string(), need),
    }
}

fn check_port_range(t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "net.ipv4.ip_local_port_range";
    let Some((lo, hi)) = f.ip_local_port_range else {
        return unread(NAME, "/proc/sys/net/ipv4/ip_local_port_range");
    };
    let ports = (hi + 1).saturating_sub(lo).max(1);
    let sources = t.connections.div_ceil(ports);
    let found = format!("{lo}-{hi} ({ports} ports per source address)");
    let need = format!(
        "loadgen on this host: {sources} source address(es) for {} connections",
        t.connections
    );
    if ports < WIDE_PORT_RANGE && sources > 1 {
        Check::warn(
            NAME,
            found,
            need,
            "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\" \
                 (only matters for load generators)",
        )
    } else {
        Check::ok(NAME, found, need)
    }
}

fn check_tcp_mem(t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "net.ipv4.tcp_mem";
    let Some([lo, pressure, max]) = f.tcp_mem else {
        return unread(NAME, "/proc/sys/net/ipv4/tcp_mem");
    };
    let page = f.page_size.max(1);
    let need_bytes = t.connections * TCP_MEM_BYTES_PER_CONNECTION;
    let need_pages = need_bytes.div_ceil(page);
    let found = format!(
        "{lo} {pressure} {max} pages (max {})",
        fmt_bytes(max * page)
    );
    let need = format!(
        "max >= {need_pages} pages ({} = {} connections x {} in flight)",
        fmt_bytes(need_bytes),
        t.connections,
        fmt_bytes(TCP_MEM_BYTES_PER_CONNECTION)
    );
    if max < need_pages {
        let new_max = need_pages.next_power_of_two();
        Check::warn(
            NAME,
            found,
            need,
            format!(
                "sysctl -w net.ipv4.tcp_mem=\"{} {} {}\"",
                new_max / 2,
                new_max * 3 / 4,
                new_max
            ),
        )
    } else {
        Check::ok(NAME, found, need)
    }
}

fn check_socket_buffers(t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "net.ipv4.tcp_rmem/tcp_wmem";
    let (Some(r), Some(w)) = (f.tcp_rmem, f.tcp_wmem) else {
        return unread(NAME, "/proc/sys/net/ipv4/tcp_rmem and tcp_wmem");
    };
    let found = format!(
        "rmem default {}, wmem default {}",
        fmt_bytes(r[1]),
        fmt_bytes(w[1])
    );
    let big = r[1] > SMALL_SOCKET_BUFFER || w[1] > SMALL_SOCKET_BUFFER;
    if t.connections >= MANY_CONNECTIONS && big {
        Check::warn(
            NAME,
            found,
            format!(
                "defaults <= {} for {} mostly idle connections",
                fmt_bytes(SMALL_SOCKET_BUFFER),
                t.connections
            ),
            format!(
                "sysctl -w net.ipv4.tcp_rmem=\"4096 16384 {}\" net.ipv4.tcp_wmem=\"4096 16384 {}\"",
                r[2], w[2]
            ),
        )
    } else {
        Check::ok(
            NAME,
            found,
            format!(
                "small defaults matter from {MANY_CONNECTIONS} connections (target {})",
                t.connections
            ),
        )
    }
}

fn check_conntrack(t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "net.netfilter.nf_conntrack_max";
    let need = format!(">= {} when conntrack tracks the port", t.connections);
    match f.nf_conntrack_max {
        None => Check::ok(NAME, "conntrack not loaded", need),
        Some(v) if v < t.connections => Check::warn(
            NAME,
            format!("{v} (new connections dropped when the table is full)"),
            need,
            format!(
                "sysctl -w net.netfilter.nf_conntrack_max={}, or skip tracking: \
                 iptables -t raw -A PREROUTING -p tcp --dport {} -j NOTRACK",
                (2 * t.connections).next_power_of_two(),
                t.port
            ),
        ),
        Some(v) => Check::ok(NAME, v.to_string(), need),
    }
}

fn check_netdev_backlog(t: &Target, f: &HostFacts) -> Check {
    const NAME: &str = "net.core.netdev_max_backlog";
    const WANT: u64 = 16_384;
    match f.netdev_max_backlog {
        None => unread(NAME, "/proc/sys/net/core/netdev_max_backlog"),
        Some(v) if v < WANT && t.connections >= MANY_CONNECTIONS => Check::warn(
            NAME,
            format!("{v} (packets queued per CPU before drops)"),
            format!(">= {WANT} for reconnect storms of {}", t.connections),
            format!("sysctl -w net.core.netdev_max_backlog={WANT}"),
        ),
        Some(v) => Check::ok(
            NAME,
            v.to_string(),
            format!(">= {WANT} from {MANY_CONNECTIONS} connections"),
        ),
    }
}

/// 1 when any check fails, else 0.
pub fn exit_code(checks: &[Check]) -> i32 {
    i32::from(checks.iter().any(|c| c.status == Status::Fail))
}

/// The table `ringcast doctor` prints: a header naming the target, one row
/// per check (`STATUS CHECK FOUND NEED`), a `fix:` line under each row that
/// is not OK, and a summary line.
pub fn render(config: &Config, facts: &HostFacts, checks: &[Check]) -> String {
    let t = Target::new(config, facts.cpus);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ringcast doctor: target {} connections{}, {} shards, backlog {}, driver {}",
        t.connections,
        if t.explicit {
            ""
        } else {
            " (max_connections = 0: default target)"
        },
        t.shards,
        t.backlog,
        match t.driver {
            DriverKind::Auto => "auto",
            DriverKind::Uring => "uring",
            DriverKind::Epoll => "epoll",
        }
    );
    let w_name = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let w_found = checks
        .iter()
        .map(|c| c.found.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let _ = writeln!(
        out,
        "{:<6} {:<w_name$}  {:<w_found$}  NEED",
        "STATUS", "CHECK", "FOUND"
    );
    for c in checks {
        let _ = writeln!(
            out,
            "{:<6} {:<w_name$}  {:<w_found$}  {}",
            c.status.label(),
            c.name,
            c.found,
            c.need
        );
        if c.status != Status::Ok && !c.fix.is_empty() {
            let _ = writeln!(out, "{:<6}   fix: {}", "", c.fix);
        }
    }
    let fails = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warns = checks.iter().filter(|c| c.status == Status::Warn).count();
    let _ = writeln!(
        out,
        "{fails} blocking, {warns} warning(s): {}",
        if fails == 0 {
            "nothing blocks the configured target"
        } else {
            "the configured target is not reachable on this host"
        }
    );
    out
}

/// `ringcast doctor`: gathers facts from this host, prints the table to
/// stdout and returns the process exit code (0 or 1).
pub fn run(config: &Config) -> i32 {
    let facts = gather_facts();
    let mut list = checks(config, &facts);
    let a = &config.sources.amqp;
    if a.enabled {
        let reached = amqp_addr(&a.url)
            .ok_or_else(|| "no host in the URL".to_owned())
            .and_then(|addr| reach(&addr));
        list.push(check_amqp_source(config, &reached));
    }
    print!("{}", render(config, &facts, &list));
    exit_code(&list)
}

/// `host:port` of an `amqp://` or `amqps://` URL (credentials and vhost
/// dropped; port 5672, or 5671 for amqps, when not given).
pub fn amqp_addr(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default = if scheme == "amqps" { 5671 } else { 5672 };
    let authority = rest.split(['/', '?']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return None;
    }
    let has_port = match host.rsplit_once(':') {
        Some((h, p)) => !h.ends_with(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    };
    Some(match has_port {
        true => host.to_owned(),
        false => format!("{host}:{default}"),
    })
}

/// The AMQP source (`[sources.amqp]`): whether the broker's address
/// answered (`reached`). A broker down only warns: the source retries.
pub fn check_amqp_source(config: &Config, reached: &Result<(), String>) -> Check {
    const NAME: &str = "amqp source";
    let a = &config.sources.amqp;
    let shown = config.redacted().sources.amqp.url;
    let need = format!("broker reachable, exchange {:?}", a.exchange);
    match reached {
        Ok(()) => Check::ok(NAME, format!("{shown} answers"), need),
        Err(e) => Check::warn(
            NAME,
            format!("{shown}: {e}"),
            need,
            "start the broker or fix sources.amqp.url; ringcast keeps retrying (100 ms to 5 s)",
        ),
    }
}

/// A TCP connection to `addr` within 2 seconds.
fn reach(addr: &str) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?;
    let mut last = format!("{addr} resolves to nothing");
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    Err(last)
}

// ---------------------------------------------------------------------------
// Reading the host.

/// Reads everything [`checks`] needs from the running host. Creates (and
/// drops) one io_uring instance to prove it works.
pub fn gather_facts() -> HostFacts {
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    let (nofile, memlock) = match &limits {
        Some(text) => (
            parse_limit(text, "Max open files"),
            parse_limit(text, "Max locked memory"),
        ),
        None => (None, None),
    };
    let status = std::fs::read_to_string("/proc/self/status").ok();
    HostFacts {
        nofile,
        memlock,
        kernel: sysctl("kernel/osrelease").as_deref().and_then(parse_kernel),
        cpus: usable_cpus(),
        io_uring: probe_io_uring(),
        io_uring_disabled: sysctl_u64("kernel/io_uring_disabled"),
        seccomp: status.as_deref().and_then(parse_seccomp),
        page_size: page_size().unwrap_or(4096),
        fs_nr_open: sysctl_u64("fs/nr_open"),
        fs_file_max: sysctl_u64("fs/file-max"),
        somaxconn: sysctl_u64("net/core/somaxconn"),
        tcp_max_syn_backlog: sysctl_u64("net/ipv4/tcp_max_syn_backlog"),
        ip_local_port_range: sysctl("net/ipv4/ip_local_port_range")
            .as_deref()
            .and_then(parse_numbers::<2>)
            .map(|[a, b]| (a, b)),
        tcp_mem: sysctl("net/ipv4/tcp_mem")
            .as_deref()
            .and_then(parse_numbers::<3>),
        tcp_rmem: sysctl("net/ipv4/tcp_rmem")
            .as_deref()
            .and_then(parse_numbers::<3>),
        tcp_wmem: sysctl("net/ipv4/tcp_wmem")
            .as_deref()
            .and_then(parse_numbers::<3>),
        nf_conntrack_max: sysctl_u64("net/netfilter/nf_conntrack_max"),
        netdev_max_backlog: sysctl_u64("net/core/netdev_max_backlog"),
    }
}

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(path)).ok()
}

fn sysctl_u64(path: &str) -> Option<u64> {
    sysctl(path)?.trim().parse().ok()
}

/// CPUs in this process's affinity mask.
pub fn usable_cpus() -> usize {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids.len(),
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Creates one ring of [`RING_ENTRIES`] entries, as a shard would.
pub fn probe_io_uring() -> UringProbe {
    match io_uring::IoUring::new(RING_ENTRIES) {
        Ok(_ring) => UringProbe::Available,
        Err(e) => uring_error(&e),
    }
}

fn uring_error(e: &io::Error) -> UringProbe {
    UringProbe::Unavailable {
        errno: e.raw_os_error(),
        message: e.to_string(),
    }
}

/// Parses one row of `/proc/self/limits`, e.g.
/// `Max open files            1024                 524288               files`.
pub fn parse_limit(limits: &str, row: &str) -> Option<Rlimit> {
    let line = limits.lines().find(|l| l.starts_with(row))?;
    let mut fields = line[row.len()..].split_whitespace();
    let value = |s: &str| -> Option<Option<u64>> {
        if s == "unlimited" {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    let soft = value(fields.next()?)?;
    let hard = value(fields.next()?)?;
    Some(Rlimit { soft, hard })
}

/// `6.8.0-45-generic` -> (6, 8).
pub fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The `Seccomp:` mode in `/proc/self/status`.
pub fn parse_seccomp(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Exactly `N` whitespace-separated numbers, as in `tcp_mem`.
pub fn parse_numbers<const N: usize>(text: &str) -> Option<[u64; N]> {
    let mut out = [0u64; N];
    let mut it = text.split_whitespace();
    for slot in &mut out {
        *slot = it.next()?.parse().ok()?;
    }
    it.next().is_none().then_some(out)
}

/// `AT_PAGESZ` from the auxiliary vector (native-endian u64 pairs).
fn page_size() -> Option<u64> {
    const AT_PAGESZ: u64 = 6;
    let auxv = std::fs::read("/proc/self/auxv").ok()?;
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
    auxv.chunks_exact(16)
        .map(|pair| (word(&pair[..8]), word(&pair[8..])))
        .find(|&(k, _)| k == AT_PAGESZ)
        .map(|(_, v)| v)
        .filter(|&v| v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_max(n: usize) -> Config {
        let mut c = Config::default();
        c.limits.max_connections = n;
        c
    }

    fn find<'a>(list: &'a [Check], prefix: &str) -> &'a Check {
        list.iter()
            .find(|c| c.name.starts_with(prefix))
            .unwrap_or_else(|| panic!("no check named {prefix}"))
    }

    #[test]
    fn roomy_host_passes_everything() {
        let list = checks(&with_max(1_000_000), &HostFacts::roomy());
        for c in &list {
            assert_eq!(c.status, Status::Ok, "{c:?}");
            assert!(c.fix.is_empty());
        }
        assert_eq!(exit_code(&list), 0);
    }

    #[test]
    fn low_soft_nofile_fails_with_ulimit_fix() {
        let mut f = HostFacts::roomy();
        f.nofile = Some(Rlimit {
            soft: Some(1024),
            hard: Some(524_288),
        });
        let list = checks(&with_max(10_000), &f);
        let c = find(&list, "open files");
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.contains("ulimit -n 16384"), "{}", c.fix);
        assert!(c.fix.contains("LimitNOFILE=16384"), "{}", c.fix);
        assert_eq!(exit_code(&list), 1);
        // A hard limit between the need and the rounded-up value caps the fix.
        f.nofile = Some(Rlimit {
            soft: Some(1024),
            hard: Some(12_000),
        });
        let c = find(&checks(&with_max(10_000), &f), "open files").clone();
        assert!(c.fix.starts_with("ulimit -n 12000"), "{}", c.fix);
    }

    #[test]
    fn low_hard_nofile_names_hard_limit_and_unit() {
        let mut f = HostFacts::roomy();
        f.nofile = Some(Rlimit {
            soft: Some(256),
            hard: Some(256),
        });
        let c = find(&checks(&with_max(10_000), &f), "open files").clone();
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.contains("ulimit -Hn 16384"), "{}", c.fix);
        assert!(c.fix.contains("LimitNOFILE=16384"), "{}", c.fix);
    }

    #[test]
    fn unbounded_target_blocks_on_open_files_and_warns_on_the_rest() {
        let mut f = HostFacts::roomy();
        f.nofile = Some(Rlimit {
            soft: Some(1024),
            hard: Some(1024),
        });
        f.fs_nr_open = Some(1024);
        let list = checks(&with_max(0), &f);
        // 1024 open files cannot hold the default target of 10,000.
        assert_eq!(find(&list, "open files").status, Status::Fail);
        assert_eq!(find(&list, "fs.nr_open").status, Status::Warn);
        assert_eq!(exit_code(&list), 1);
    }

    #[test]
    fn headroom_counts_shards() {
        let mut c = with_max(1000);
        c.shards = 4;
        let t = Target::new(&c, 8);
        assert_eq!(t.fds(), 1000 + FD_HEADROOM + 4 * FD_PER_SHARD);
        let t = Target::new(&with_max(1000), 2);
        assert_eq!(t.shards, 2);
    }

    #[test]
    fn unlimited_nofile_is_ok() {
        let mut f = HostFacts::roomy();
        f.nofile = Some(Rlimit::UNLIMITED);
        let list = checks(&with_max(5_000_000), &f);
        assert_eq!(find(&list, "open files").status, Status::Ok);
    }

    #[test]
    fn nr_open_and_file_max_block() {
        let mut f = HostFacts::roomy();
        f.fs_nr_open = Some(1_048_576);
        f.fs_file_max = Some(500_000);
        let list = checks(&with_max(2_000_000), &f);
        let nr = find(&list, "fs.nr_open");
        assert_eq!(nr.status, Status::Fail);
        assert_eq!(nr.fix, "sysctl -w fs.nr_open=2097152");
        assert_eq!(find(&list, "fs.file-max").status, Status::Fail);
    }

    #[test]
    fn uring_required_but_disabled_fails() {
        let mut f = HostFacts::roomy();
        f.io_uring = UringProbe::Unavailable {
            errno: Some(1),
            message: "Operation not permitted (os error 1)".into(),
        };
        f.io_uring_disabled = Some(2);
        let mut c = with_max(100);
        c.driver = DriverKind::Uring;
        let list = checks(&c, &f);
        let u = find(&list, "io_uring");
        assert_eq!(u.status, Status::Fail);
        assert!(
            u.found.contains("kernel.io_uring_disabled = 2"),
            "{}",
            u.found
        );
        assert_eq!(u.fix, "sysctl -w kernel.io_uring_disabled=0");
        assert_eq!(exit_code(&list), 1);

        c.driver = DriverKind::Auto;
        assert_eq!(find(&checks(&c, &f), "io_uring").status, Status::Warn);
        c.driver = DriverKind::Epoll;
        let e = checks(&c, &f);
        assert_eq!(find(&e, "io_uring").status, Status::Ok);
        assert!(find(&e, "io_uring").fix.is_empty());
    }

    #[test]
    fn uring_seccomp_is_named() {
        let mut f = HostFacts::roomy();
        f.seccomp = Some(2);
        f.io_uring = UringProbe::Unavailable {
            errno: Some(38),
            message: "Function not implemented (os error 38)".into(),
        };
        let list = checks(&with_max(100), &f);
        let u = find(&list, "io_uring");
        assert_eq!(u.status, Status::Warn);
        assert!(u.found.contains("seccomp"), "{}", u.found);
        assert!(u.fix.contains("seccomp"), "{}", u.fix);

        f.seccomp = Some(0);
        f.io_uring = UringProbe::Unavailable {
            errno: Some(1),
            message: "Operation not permitted (os error 1)".into(),
        };
        let u = find(&checks(&with_max(100), &f), "io_uring").clone();
        assert!(u.found.contains("seccomp"), "{}", u.found);
    }

    #[test]
    fn memlock_matters_only_before_5_12() {
        let mut f = HostFacts::roomy();
        f.memlock = Some(Rlimit {
            soft: Some(64 << 10),
            hard: Some(64 << 10),
        });
        let mut c = with_max(100);
        c.shards = 4;
        c.driver = DriverKind::Uring;
        assert_eq!(find(&checks(&c, &f), "locked memory").status, Status::Ok);
        f.kernel = Some((5, 4));
        let m = find(&checks(&c, &f), "locked memory").clone();
        assert_eq!(m.status, Status::Fail);
        assert!(m.fix.contains("LimitMEMLOCK=infinity"));
        c.driver = DriverKind::Auto;
        assert_eq!(find(&checks(&c, &f), "locked memory").status, Status::Warn);
    }

    #[test]
    fn memlock_estimate_uses_the_shards_ring_size() {
        assert_eq!(RING_ENTRIES, crate::runtime::start::SHARD_RING_ENTRIES);
        let mut f = HostFacts::roomy();
        f.kernel = Some((5, 4));
        let mut c = with_max(100);
        c.shards = 2;
        c.driver = DriverKind::Uring;
        // Enough for two rings of 1024 entries, not for two of 4096.
        let limit = 2 * ring_bytes(1024, 4096);
        assert!(limit < 2 * ring_bytes(RING_ENTRIES, 4096));
        f.memlock = Some(Rlimit {
            soft: Some(limit),
            hard: Some(limit),
        });
        let m = find(&checks(&c, &f), "locked memory").clone();
        assert_eq!(m.status, Status::Fail, "{m:?}");
        assert!(m.need.contains("2 rings x 4096 entries"), "{}", m.need);
        assert!(m.need.contains("816 KiB"), "{}", m.need);
    }

    #[test]
    fn ring_bytes_arithmetic() {
        // 1024 entries: SQ 68 KiB + 4 KiB header, CQ 32 KiB + 4 KiB header.
        assert_eq!(ring_bytes(1024, 4096), (72 + 36) << 10);
    }

    #[test]
    fn cpus_fewer_than_shards_warns() {
        let mut f = HostFacts::roomy();
        f.cpus = 2;
        let mut c = with_max(100);
        c.shards = 8;
        let cpu = find(&checks(&c, &f), "cpus").clone();
        assert_eq!(cpu.status, Status::Warn);
        assert!(cpu.fix.contains("shards = 2"));
        assert!(cpu.fix.contains("CPUAffinity="));
        c.shards = 0;
        assert_eq!(find(&checks(&c, &f), "cpus").status, Status::Ok);
    }

    #[test]
    fn small_somaxconn_and_narrow_ports_warn() {
        let mut f = HostFacts::roomy();
        f.somaxconn = Some(128);
        f.ip_local_port_range = Some((32_768, 60_999));
        let list = checks(&with_max(100_000), &f);
        let s = find(&list, "net.core.somaxconn");
        assert_eq!(s.status, Status::Warn);
        assert_eq!(s.fix, "sysctl -w net.core.somaxconn=4096");
        let p = find(&list, "net.ipv4.ip_local_port_range");
        assert_eq!(p.status, Status::Warn);
        assert!(p.need.contains("4 source address"), "{}", p.need);
        assert_eq!(exit_code(&list), 0);
        // One source address is enough for a small target: no warning.
        let small = checks(&with_max(1000), &f);
        assert_eq!(
            find(&small, "net.ipv4.ip_local_port_range").status,
            Status::Ok
        );
    }

    #[test]
    fn memory_sysctls_warn_at_scale() {
        let mut f = HostFacts::roomy();
        f.tcp_mem = Some([100, 200, 300]);
        f.tcp_rmem = Some([4096, 131_072, 6 << 20]);
        f.nf_conntrack_max = Some(262_144);
        f.netdev_max_backlog = Some(1000);
        let list = checks(&with_max(1_000_000), &f);
        for name in [
            "net.ipv4.tcp_mem",
            "net.ipv4.tcp_rmem",
            "net.netfilter",
            "net.core.netdev",
        ] {
            assert_eq!(find(&list, name).status, Status::Warn, "{name}");
        }
        assert!(find(&list, "net.netfilter").fix.contains("--dport 58000"));
        assert_eq!(exit_code(&list), 0);
        let small = checks(&with_max(1000), &f);
        assert_eq!(find(&small, "net.ipv4.tcp_rmem").status, Status::Ok);
        assert_eq!(find(&small, "net.netfilter").status, Status::Ok);
    }

    #[test]
    fn render_prints_every_check_and_fixes() {
        let mut f = HostFacts::roomy();
        f.somaxconn = Some(128);
        let c = with_max(100);
        let list = checks(&c, &f);
        let out = render(&c, &f, &list);
        for check in &list {
            assert!(out.contains(check.name), "{out}");
        }
        assert!(
            out.contains("fix: sysctl -w net.core.somaxconn=4096"),
            "{out}"
        );
        assert!(out.contains("0 blocking, 1 warning"), "{out}");
    }

    #[test]
    fn parsers() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n\
                      Max locked memory         unlimited            unlimited            bytes     \n";
        assert_eq!(
            parse_limit(limits, "Max open files"),
            Some(Rlimit {
                soft: Some(1024),
                hard: Some(524_288)
            })
        );
        assert_eq!(
            parse_limit(limits, "Max locked memory"),
            Some(Rlimit::UNLIMITED)
        );
        assert_eq!(parse_limit(limits, "Max processes"), None);
        assert_eq!(parse_kernel("6.8.0-45-generic\n"), Some((6, 8)));
        assert_eq!(parse_kernel("5.4.0"), Some((5, 4)));
        assert_eq!(parse_numbers::<2>("32768\t60999\n"), Some([32_768, 60_999]));
        assert_eq!(parse_numbers::<3>("1 2"), None);
        assert_eq!(parse_numbers::<2>("1 2 3"), None);
        assert_eq!(parse_seccomp("Name:\tx\nSeccomp:\t2\n"), Some(2));
    }

    #[test]
    fn amqp_source_check_reads_the_url_and_warns_when_down() {
        assert_eq!(
            amqp_addr("amqp://u:p@mq.local/%2f").as_deref(),
            Some("mq.local:5672")
        );
        assert_eq!(amqp_addr("amqps://mq:5000").as_deref(), Some("mq:5000"));
        assert_eq!(
            amqp_addr("amqp://127.0.0.1:5673/vh?heartbeat=5").as_deref(),
            Some("127.0.0.1:5673")
        );
        assert_eq!(amqp_addr("amqp:///"), None);
        let mut c = Config::default();
        c.sources.amqp.enabled = true;
        c.sources.amqp.url = "amqp://guest:secret@mq:5672/%2f".into();
        let ok = check_amqp_source(&c, &Ok(()));
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(ok.found, "amqp://<redacted>@mq:5672/%2f answers");
        let down = check_amqp_source(&c, &Err("cannot connect to 1.2.3.4:5672: refused".into()));
        assert_eq!(down.status, Status::Warn);
        assert!(!down.found.contains("secret"));
        assert!(down.fix.contains("sources.amqp.url"));
    }
}
