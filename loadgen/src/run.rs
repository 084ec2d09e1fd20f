//! Runs a scenario: plans connections over threads (and worker processes),
//! steers them through the phases, publishes, samples the server, and
//! builds the report.

use crate::cli::{ClientProtocol, Scenario, Settings};
use crate::client::{self, phase, ChatPlan, Control, ThreadPlan, ThreadStats};
use crate::procstat;
use crate::publisher::{self, PublishPlan};
use crate::report::{LatencySummary, Report, ServerCost};
use crate::sys;
use anyhow::{anyhow, bail, Context};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable that makes a process a worker: `INDEX/COUNT`.
pub const WORKER_ENV: &str = "RINGCAST_LOADGEN_WORKER";
const PREFIX_ENV: &str = "RINGCAST_LOADGEN_PREFIX";
/// File descriptors kept aside for everything but client connections.
const FD_RESERVE: u64 = 64;

/// An error that is the user's to fix: one line, exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The part of the work a process does.
struct Share {
    index: u64,
    count: u64,
}

impl Share {
    fn connections(&self, total: u64) -> impl Iterator<Item = u64> + '_ {
        (self.index..total).step_by(self.count as usize)
    }
}

/// Checks the fd limit against the connections one process will hold.
fn check_fd_limit(s: &Settings) -> anyhow::Result<()> {
    let limit = sys::raise_fd_limit().unwrap_or(1024);
    let per_process = s.opts.connections.div_ceil(s.opts.processes);
    let need = per_process + FD_RESERVE + s.opts.threads * 4;
    if need > limit {
        let procs = s
            .opts
            .connections
            .div_ceil(limit.saturating_sub(FD_RESERVE + s.opts.threads * 4).max(1));
        return Err(UsageError(format!(
            "{per_process} connections per process need {need} file descriptors but the limit is {limit}: use --processes {procs} or raise `ulimit -n`"
        ))
        .into());
    }
    Ok(())
}

fn channel_names(s: &Settings) -> Arc<Vec<String>> {
    let prefix = s
        .opts
        .channel_prefix
        .clone()
        .or_else(|| std::env::var(PREFIX_ENV).ok())
        .unwrap_or_else(|| format!("lg-{}-", std::process::id()));
    if s.opts.protocol == ClientProtocol::Ws4redis {
        return Arc::new(vec![s.opts.ws4redis_channel.clone()]);
    }
    Arc::new((0..s.channels).map(|k| format!("{prefix}{k}")).collect())
}

/// The client threads of one process.
struct LocalPool {
    control: Arc<Control>,
    handles: Vec<std::thread::JoinHandle<ThreadStats>>,
    threads: usize,
    connections: u64,
}

impl LocalPool {
    fn start(s: &Settings, share: &Share, names: &Arc<Vec<String>>) -> anyhow::Result<Self> {
        let threads = s.opts.threads as usize;
        let control = Control::new(names.len());
        let mut plans: Vec<ThreadPlan> = (0..threads)
            .map(|t| ThreadPlan {
                index: t,
                core: (!s.opts.no_pin).then_some(s.opts.first_core + t),
                // Several servers (cluster nodes): thread by thread.
                server: s.servers[t % s.servers.len()].0,
                host_header: s.servers[t % s.servers.len()].1.clone(),
                path: s.opts.path.clone(),
                protocol: s.opts.protocol,
                src_ips: s.src_ips.clone(),
                channel_names: names.clone(),
                connections: Vec::new(),
                concurrency: (s.opts.connect_concurrency / (threads as u64 * s.opts.processes))
                    .max(1) as usize,
                connect_timeout: Duration::from_secs_f64(s.opts.connect_timeout),
                chat: (s.scenario == Scenario::Chat).then(|| ChatPlan {
                    rate_per_client: s.opts.rate.unwrap_or(1.0),
                    messages_per_client: s.opts.messages,
                    size: s.opts.size as usize,
                }),
                stall: (s.opts.stall_connections > 0)
                    .then(|| (Vec::new(), Duration::from_secs_f64(s.opts.stall_seconds))),
                heartbeat: s.opts.heartbeat.clone().into_bytes(),
                thor_cycles: if s.thor && s.opts.protocol == ClientProtocol::Ws4redis {
                    s.opts.messages.unwrap_or(1)
                } else {
                    0
                },
                churn_rate: (s.scenario == Scenario::Churn).then(|| {
                    s.opts.rate.unwrap_or(100.0) / (threads as u64 * s.opts.processes) as f64
                }),
            })
            .collect();
        let mut connections = 0;
        for (i, g) in share.connections(s.opts.connections).enumerate() {
            let p = &mut plans[i % threads];
            if g < s.opts.stall_connections {
                if let Some((v, _)) = &mut p.stall {
                    v.push(p.connections.len());
                }
            }
            p.connections.push(vec![(g % s.channels) as u32]);
            connections += 1;
        }
        let allowed: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let mut handles = Vec::new();
        for mut p in plans {
            p.core = p.core.map(|c| pick_core(c, &allowed));
            let c = control.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("lg-client-{}", p.index))
                    .spawn(move || client::run_thread(p, c))?,
            );
        }
        Ok(LocalPool {
            control,
            handles,
            threads,
            connections,
        })
    }

    fn ready(&self) -> bool {
        self.control.ready.load(Ordering::Acquire) >= self.threads
    }

    fn go(&self) {
        self.control.phase.store(phase::RUN, Ordering::Release);
    }

    fn stop_sending(&self, deadline: Duration) -> Vec<u64> {
        let c = &self.control;
        c.drain_deadline_ns.store(
            c.since_epoch_ns() + deadline.as_nanos() as u64,
            Ordering::Relaxed,
        );
        c.phase.store(phase::STOP_SENDING, Ordering::Release);
        while c.sent_done.load(Ordering::Acquire) < self.threads
            && !self.handles.iter().all(|h| h.is_finished())
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        c.acked.lock().expect("acked lock").clone()
    }

    fn drain(self, finals: Vec<u64>, timeout: Duration) -> anyhow::Result<Report> {
        let c = &self.control;
        c.drain_deadline_ns.store(
            c.since_epoch_ns() + timeout.as_nanos() as u64,
            Ordering::Relaxed,
        );
        let _ = c.finals.set(finals);
        c.phase.store(phase::DRAIN, Ordering::Release);
        let mut r = Report {
            processes: 1,
            threads: self.threads as u32,
            connections_target: self.connections,
            ..Default::default()
        };
        let mut connect_hist = crate::report::new_histogram();
        let mut latency = crate::report::new_histogram();
        let mut connect_done = 0u64;
        for h in self.handles {
            let t = h.join().map_err(|_| anyhow!("client thread panicked"))?;
            r.connections_open += t.opened;
            for (k, v) in t.connect_failures {
                *r.connect_failures.entry(k).or_default() += v;
            }
            connect_hist.add(&t.connect_hist).expect("same bounds");
            latency.add(&t.latency).expect("same bounds");
            r.deliveries += t.counts.delivered;
            r.deliveries_unacknowledged += t.counts.beyond_final;
            r.lost += t.counts.lost;
            r.duplicates += t.counts.duplicates;
            r.reordered += t.counts.reordered;
            r.expected_deliveries += t.expected;
            r.unexpected_closes += t.unexpected_closes;
            for (k, v) in t.close_reasons {
                *r.close_reasons.entry(k).or_default() += v;
            }
            r.protocol_errors += t.protocol_errors;
            for (k, v) in t.rpc_errors {
                *r.rpc_errors.entry(k).or_default() += v;
            }
            r.publications += t.sent;
            r.churned += t.churned;
            r.thor_cycles += t.thor_cycles;
            r.last_delivery_wall_ns = r.last_delivery_wall_ns.max(t.last_delivery_wall_ns);
            connect_done = connect_done.max(t.connect_done_ns);
        }
        r.connect_seconds = connect_done as f64 / 1e9;
        r.connect_latency_ns = LatencySummary::from_histogram(&connect_hist);
        r.latency_ns = LatencySummary::from_histogram(&latency);
        Ok(r)
    }

    fn abort(&self) {
        self.control.abort.store(true, Ordering::Relaxed);
    }
}

/// The CPU a client thread asked to run on `want` is pinned to: `want`
/// itself if this process may run there, else the `want % n`th of the `n`
/// CPUs it may run on (`allowed`, from its affinity mask: under
/// `taskset -c 1`, `--first-core 1` stays on CPU 1, and threads past the
/// mask wrap around inside it, never onto a CPU outside it).
fn pick_core(want: usize, allowed: &[usize]) -> usize {
    if allowed.is_empty() || allowed.contains(&want) {
        return want;
    }
    allowed[want % allowed.len()]
}

/// Worker processes, each running a [`LocalPool`] and speaking a line
/// protocol on stdin/stdout: `READY`, `GO`, `STOP_SENDING ms` → `ACKED json`,
/// `DRAIN ms json` → `REPORT json`.
struct ProcessPool {
    children: Vec<(Child, ChildStdin, BufReader<ChildStdout>)>,
}

impl ProcessPool {
    fn start(n: u64, prefix: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating own executable")?;
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        let mut children = Vec::new();
        for i in 0..n {
            let mut child = Command::new(&exe)
                .args(&args)
                .env(WORKER_ENV, format!("{i}/{n}"))
                .env(PREFIX_ENV, prefix)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting worker process")?;
            let stdin = child.stdin.take().expect("piped");
            let stdout = BufReader::new(child.stdout.take().expect("piped"));
            children.push((child, stdin, stdout));
        }
        Ok(ProcessPool { children })
    }

    fn expect_all(&mut self, tag: &str) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for (i, (_, _, r)) in self.children.iter_mut().enumerate() {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let rest = line
                .trim_end()
                .strip_prefix(tag)
                .ok_or_else(|| anyhow!("worker {i} said {:?} instead of {tag}", line.trim_end()))?;
            out.push(rest.trim_start().to_string());
        }
        Ok(out)
    }

    fn send_all(&mut self, line: &str) -> anyhow::Result<()> {
        for (_, w, _) in &mut self.children {
            writeln!(w, "{line}")?;
            w.flush()?;
        }
        Ok(())
    }
}

/// Whichever pool this run uses.
enum Pool {
    Local(LocalPool),
    Processes(ProcessPool),
}

impl Pool {
    fn wait_ready(&mut self, progress: &Progress, target: u64) -> anyhow::Result<()> {
        match self {
            Pool::Local(p) => {
                while !p.ready() {
                    progress.set(p.control.open.load(Ordering::Relaxed), target, "connecting");
                    std::thread::sleep(Duration::from_millis(20));
                    if p.handles.iter().any(|h| h.is_finished()) && !p.ready() {
                        bail!("a client thread stopped while connecting");
                    }
                }
                Ok(())
            }
            Pool::Processes(p) => p.expect_all("READY").map(|_| ()),
        }
    }

    fn go(&mut self) -> anyhow::Result<()> {
        match self {
            Pool::Local(p) => {
                p.go();
                Ok(())
            }
            Pool::Processes(p) => p.send_all("GO"),
        }
    }

    fn delivered(&self) -> Option<u64> {
        match self {
            Pool::Local(p) => Some(p.control.delivered.load(Ordering::Relaxed)),
            Pool::Processes(_) => None,
        }
    }

    fn stop_sending(&mut self, deadline: Duration) -> anyhow::Result<Vec<u64>> {
        match self {
            Pool::Local(p) => Ok(p.stop_sending(deadline)),
            Pool::Processes(p) => {
                p.send_all(&format!("STOP_SENDING {}", deadline.as_millis()))?;
                let mut merged: Vec<u64> = Vec::new();
                for line in p.expect_all("ACKED")? {
                    let v: Vec<u64> = serde_json::from_str(&line)?;
                    merged.resize(merged.len().max(v.len()), 0);
                    for (m, x) in merged.iter_mut().zip(v) {
                        *m = (*m).max(x);
                    }
                }
                Ok(merged)
            }
        }
    }

    fn drain(self, finals: Vec<u64>, timeout: Duration) -> anyhow::Result<Report> {
        match self {
            Pool::Local(p) => p.drain(finals, timeout),
            Pool::Processes(mut p) => {
                p.send_all(&format!(
                    "DRAIN {} {}",
                    timeout.as_millis(),
                    serde_json::to_string(&finals)?
                ))?;
                let mut merged = Report::default();
                for line in p.expect_all("REPORT")? {
                    merged.merge(&serde_json::from_str(&line)?);
                }
                for (mut c, _, _) in p.children {
                    let _ = c.wait();
                }
                Ok(merged)
            }
        }
    }
}

/// Progress on a terminal (indicatif), nothing otherwise.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(enabled: bool) -> Self {
        Progress(enabled.then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len}",
                )
                .expect("static template"),
            );
            b
        }))
    }

    fn set(&self, pos: u64, len: u64, msg: &'static str) {
        if let Some(b) = &self.0 {
            b.set_length(len);
            b.set_position(pos);
            b.set_message(msg);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// Waits `d`, updating progress and sampling server RSS once a second.
fn hold(
    d: Duration,
    pool: &Pool,
    progress: &Progress,
    pid: Option<u32>,
    t0: Instant,
    samples: &mut Vec<(f64, u64)>,
) {
    let start = Instant::now();
    let mut next_sample = Duration::ZERO;
    while start.elapsed() < d {
        if let Some(pid) = pid {
            if start.elapsed() >= next_sample {
                if let Some(s) = procstat::sample(pid, sys::clock_ticks()) {
                    samples.push((t0.elapsed().as_secs_f64(), s.rss_bytes));
                }
                next_sample += Duration::from_secs(1);
            }
        }
        let secs = start.elapsed().as_secs();
        match pool.delivered() {
            Some(n) => progress.set(n, n.max(1), "delivered"),
            None => progress.set(secs, d.as_secs().max(1), "running"),
        }
        std::thread::sleep(Duration::from_millis(50).min(d.saturating_sub(start.elapsed())));
    }
}

/// Runs the worker side of a multi-process run.
pub fn run_worker(s: &Settings, spec: &str) -> anyhow::Result<()> {
    let (i, n) = spec
        .split_once('/')
        .ok_or_else(|| anyhow!("bad {WORKER_ENV} {spec:?}"))?;
    let share = Share {
        index: i.parse()?,
        count: n.parse()?,
    };
    sys::raise_fd_limit()?;
    let names = channel_names(s);
    let pool = LocalPool::start(s, &share, &names)?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    while !pool.ready() {
        std::thread::sleep(Duration::from_millis(10));
    }
    writeln!(out, "READY")?;
    out.flush()?;
    let mut line = String::new();
    let cpu0 = sys::own_cpu_ns();
    loop {
        line.clear();
        if stdin.read_line(&mut line)? == 0 {
            pool.abort();
            bail!("coordinator went away");
        }
        let l = line.trim_end();
        if l == "GO" {
            pool.go();
        } else if let Some(ms) = l.strip_prefix("STOP_SENDING ") {
            let acked = pool.stop_sending(Duration::from_millis(ms.parse()?));
            writeln!(out, "ACKED {}", serde_json::to_string(&acked)?)?;
            out.flush()?;
        } else if let Some(rest) = l.strip_prefix("DRAIN ") {
            let (ms, finals) = rest
                .split_once(' ')
                .ok_or_else(|| anyhow!("bad DRAIN line"))?;
            let finals: Vec<u64> = serde_json::from_str(finals)?;
            let mut r = pool.drain(finals, Duration::from_millis(ms.parse()?))?;
            r.client_cpu_ns = sys::own_cpu_ns() - cpu0;
            writeln!(out, "REPORT {}", serde_json::to_string(&r)?)?;
            out.flush()?;
            return Ok(());
        }
    }
}

/// Runs a whole scenario and returns the merged report.
pub fn run(s: &Settings) -> anyhow::Result<Report> {
    check_fd_limit(s)?;
    let names = channel_names(s);
    let prefix = names[0].trim_end_matches('0').to_string();
    let pid = s.opts.server_pid;
    let ticks = sys::clock_ticks();
    let sample = || pid.and_then(|p| procstat::sample(p, ticks));
    if let Some(p) = pid {
        if sample().is_none() {
            return Err(UsageError(format!(
                "--server-pid {p}: no such process (or /proc/{p} unreadable)"
            ))
            .into());
        }
    }
    let progress = Progress::new(sys::stderr_is_tty());
    let t0 = Instant::now();
    let before = sample();
    let cpu_start = sys::own_cpu_ns();

    let mut pool = if s.opts.processes > 1 {
        Pool::Processes(ProcessPool::start(s.opts.processes, &prefix)?)
    } else {
        Pool::Local(LocalPool::start(s, &Share { index: 0, count: 1 }, &names)?)
    };
    pool.wait_ready(&progress, s.opts.connections)?;
    let connected = sample();
    let server_info = publisher::call(s.backend, r#"{"jsonrpc":"2.0","id":1,"method":"info"}"#)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("result").cloned());

    let duration = Duration::from_secs_f64(s.opts.duration);
    let drain = Duration::from_secs_f64(s.opts.drain_timeout);
    let mut rss_samples = Vec::new();
    let window_cpu_start = sys::own_cpu_ns();
    let server_window_start = sample();
    let publish_start_wall = wall_ns();
    pool.go()?;
    let mut publications = 0;
    let mut publish_errors = 0;
    let mut publications_sent = 0;
    let finals = match s.scenario {
        Scenario::Fanout | Scenario::Saturate => {
            let rate = match (s.scenario, s.thor) {
                (Scenario::Fanout, _) => Some(s.opts.rate.unwrap_or(100.0)),
                _ => s.opts.rate,
            };
            let messages = if s.thor {
                s.opts.messages.map(|m| m * s.channels)
            } else {
                s.opts.messages
            };
            let plan = PublishPlan {
                backend: s.backend,
                channel_names: names.clone(),
                rate,
                duration: if s.thor && messages.is_some() {
                    None
                } else {
                    Some(duration)
                },
                messages,
                window: s.opts.window,
                size: s.opts.size as usize,
                backdate_ns: s.opts.ts_backdate_ms * 1_000_000,
                response_timeout: Duration::from_secs_f64(s.opts.backend_timeout),
                redis: s.redis,
            };
            let abort = std::sync::atomic::AtomicBool::new(false);
            let res = std::thread::scope(|sc| {
                let h = sc.spawn(|| publisher::run(&plan, &abort));
                while !h.is_finished() {
                    if let Some(n) = pool.delivered() {
                        progress.set(n, n.max(1), "delivered");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                h.join().map_err(|_| anyhow!("publisher panicked"))
            })?;
            let res = res.with_context(|| format!("publishing to backend {}", s.backend))?;
            if let Some(e) = &res.first_error {
                eprintln!("ringcast-loadgen: publish error: {e}");
            }
            publications = res.publications;
            publications_sent = res.sent;
            publish_errors = res.errors;
            match s.opts.protocol {
                ClientProtocol::Native => res.finals,
                ClientProtocol::Dmoj | ClientProtocol::Socketio | ClientProtocol::Ws4redis => {
                    res.seqs
                }
            }
        }
        Scenario::Chat => {
            hold(duration, &pool, &progress, pid, t0, &mut rss_samples);
            pool.stop_sending(drain)?
        }
        Scenario::Idle | Scenario::Churn => {
            hold(duration, &pool, &progress, pid, t0, &mut rss_samples);
            vec![0; names.len()]
        }
        Scenario::Connect => vec![0; names.len()],
    };
    let mut report = pool.drain(finals, drain)?;
    if s.scenario == Scenario::Churn {
        // The churn runs from the workers' start to the drain just done.
        report.churn_seconds = t0.elapsed().as_secs_f64();
        report.churn_target_per_s = s.opts.rate.unwrap_or(100.0);
        // Its connections were opened over the whole churn, not in a
        // connect phase: the JSON's connect rate is the churn's.
        report.connect_seconds = report.churn_seconds;
        report.finish_rates();
    }
    progress.finish();
    let window_end = sample();
    if s.scenario == Scenario::Churn {
        std::thread::sleep(Duration::from_secs(1));
    }
    let after = sample();

    report.scenario = if s.thor {
        "thor".into()
    } else {
        s.scenario.name().into()
    };
    report.channels = s.channels;
    report.server_info = server_info;
    if s.scenario != Scenario::Chat {
        report.publications = publications;
        report.publications_sent = publications_sent;
    }
    report.publish_errors += publish_errors;
    report.window_seconds = if report.last_delivery_wall_ns > publish_start_wall {
        (report.last_delivery_wall_ns - publish_start_wall) as f64 / 1e9
    } else {
        0.0
    };
    if s.opts.processes > 1 {
        // Workers reported their own CPU; add the coordinator's.
        report.client_cpu_ns += sys::own_cpu_ns() - cpu_start;
    } else {
        report.client_cpu_ns = sys::own_cpu_ns() - window_cpu_start;
    }
    if let (Some(p), Some(b)) = (pid, before) {
        let w0 = server_window_start.unwrap_or(b);
        let w1 = window_end.unwrap_or(w0);
        report.server = Some(ServerCost {
            pid: p,
            cpu_ns: w1.cpu_ns.saturating_sub(w0.cpu_ns),
            rss_before_bytes: b.rss_bytes,
            rss_connected_bytes: connected.map(|c| c.rss_bytes).unwrap_or(0),
            rss_after_bytes: after.map(|a| a.rss_bytes).unwrap_or(0),
            fds_before: b.fds,
            fds_after: after.and_then(|a| a.fds),
            rss_samples,
            ..Default::default()
        });
    }
    report.finish_rates();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::pick_core;

    #[test]
    fn client_threads_stay_inside_the_affinity_mask() {
        // `taskset -c 1 ringcast-loadgen --first-core 1`: CPU 1, not CPU 0
        // (the wrap once counted CPUs instead of naming them).
        assert_eq!(pick_core(1, &[1]), 1);
        assert_eq!(pick_core(2, &[1]), 1);
        assert_eq!(pick_core(0, &[2, 3]), 2);
        assert_eq!(pick_core(3, &[2, 3]), 3);
        assert_eq!(pick_core(5, &[2, 3]), 3);
        assert_eq!(pick_core(1, &[0, 1]), 1);
        // No mask known: as asked.
        assert_eq!(pick_core(7, &[]), 7);
    }
}
