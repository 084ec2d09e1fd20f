//! django-websockets' "REST using Websockets" demo (COMPAT section 5), as a
//! drop-in: a page starts timed jobs on the server, kills them and lists
//! what is running, over one WebSocket (`[protocols.jobs]`).
//!
//! ```text
//! {"connid":"a1","time":"5","route":"request"}  → after 5 s: {"status":"Ok"}
//!                                                  (killed first: {"status":"Killed"})
//! {"connid":"a1","route":"kill"}                → {"status":"Ok"} | {"status":"Invalid connection Id"}
//! {"route":"status"} (or any other route)      → {"a1":3,...} (whole seconds left, rounded up)
//! ```
//!
//! What differs from the demo, on purpose: a connid already running is
//! answered `{"status":"error","message":...}` (the demo ignores it), as
//! is a bad `time` (the demo's handler dies), a message that is not a JSON
//! object, a missing connid, and a request past the per-connection cap
//! (`max_jobs_per_connection`: it starts nothing). `time` may be fractional
//! (`"0.25"`); it must be from 0 to `max_job_seconds` (0 answers
//! `{"status":"Ok"}` at once, as the demo does). Replies are JSON unless
//! `replies = "python"`, which writes the demo's Python reprs
//! (`{'status':'Ok'}`, `{u'a1': 3}`).
//!
//! # Timers
//!
//! `status` lists at most [`STATUS_MAX_JOBS`] jobs, the earliest, so its
//! reply stays inside the connection's outbound budget whatever the table
//! holds.
//!
//! A connection's jobs live in its [`SessionState`], ordered by deadline
//! (a `BTreeMap` keyed by deadline and start order, plus a map by connid
//! for `kill`). [`Protocol::next_deadline`] is the earliest; the session
//! sleeps on the shard's timer wheel until then (one timer per connection
//! with jobs, however many jobs), and [`Protocol::on_deadline`] answers
//! every job that fell due. No task or thread per job.
//!
//! # Rate limit before action
//!
//! Each message becomes one [`Op::Heartbeat`] call, so the engine's client
//! rate limit takes one token for it like any other request; the parsed
//! command waits in the state and runs when its answer is written
//! ([`Protocol::write_answer`]). A message the rate limit refuses is
//! answered with an error and starts or kills nothing.
//!
//! # `scope = "global"`: the demo's shared table
//!
//! Any connection may list and kill any connection's job, on any shard.
//! Jobs still live, and fall due, in their owner's session (so completion
//! costs no lock and no cross-shard message); in global scope each is also
//! entered in one node-wide [`GlobalTable`] behind a mutex, which holds,
//! per connid, its owner and deadline, and per owner a [`SessionWake`]
//! handle and an inbox of jobs others killed. The table is touched only by
//! jobs messages of global-scope connections, never by publications.
//!
//! - `request`: under the lock, refused if the connid is in the table, else
//!   entered with this session as owner.
//! - `kill` of another session's job: under the lock, the entry leaves the
//!   table and its connid goes into the owner's inbox; after the lock, the
//!   owner's [`SessionWake`] is called. The runtime's wake posts a message
//!   to the owner's shard mailbox (which wakes that shard if it sleeps);
//!   the shard wakes the session, which calls `on_deadline`: the owner
//!   drains its inbox and sends `{"status":"Killed"}` at once. The killer
//!   gets `{"status":"Ok"}` when the entry left the table. (Should the wake
//!   ever be lost, the killed job is still in the owner's timer and is
//!   answered `Killed` at its original deadline.)
//! - A job falling due: under the lock, the owner first drains its inbox,
//!   then removes its due jobs from the table and answers them `Ok`. Kill
//!   and completion are thus decided by who takes the lock first: the
//!   killer either removed the entry (the owner answers `Killed`) or finds
//!   it gone (`Invalid connection Id`, the owner answered `Ok`).
//! - A session that ends (the connection closed) drops its state, which
//!   cancels its jobs and removes them and its inbox from the table.
//!
//! The table is one per process (a static), as a ringcast process is one
//! node.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::adapter::{Answer, Exchange, Protocol, SessionState, SessionWake};
use super::rpc::{ReplyWriter, RpcParser};
use crate::ops::config::{Config, JobReplies, JobScope};
use crate::pubsub::ops::Op;
use crate::pubsub::publication::Publication;

/// Most jobs one `status` reply lists (the earliest deadlines): with
/// connids of at most [`MAX_CONNID_CHARS`] the reply stays under about
/// 700 KB, inside the default outbound budget (`limits.max_outbound_bytes`,
/// 1 MiB), however many jobs a global table holds.
pub const STATUS_MAX_JOBS: usize = 5000;

/// Longest connid accepted, in characters.
pub const MAX_CONNID_CHARS: usize = 128;

/// The timed-jobs protocol.
pub struct Jobs;

impl Protocol for Jobs {
    fn name(&self) -> &'static str {
        "jobs"
    }

    fn path<'c>(&self, cfg: &'c Config) -> &'c str {
        &cfg.protocols.jobs.path
    }

    fn encode_publication(&self, _p: &Publication) -> Bytes {
        // Jobs connections subscribe to nothing.
        Bytes::new()
    }

    fn open(&self, cfg: &Config) -> SessionState {
        let global = match cfg.protocols.jobs.scope {
            JobScope::Connection => None,
            JobScope::Global => Some(&*GLOBAL),
        };
        SessionState::new(JobsState::new(Settings::from(cfg), global))
    }

    fn attach(&self, state: &mut SessionState, waker: &dyn Fn() -> Arc<dyn SessionWake>) {
        if let Some(s) = state.get_mut::<JobsState>() {
            if let Some(g) = &mut s.global {
                g.waker = Some(waker());
            }
        }
    }

    fn handle_message(
        &self,
        state: &mut SessionState,
        msg: &[u8],
        _parser: &mut RpcParser,
        now: Instant,
    ) -> Exchange {
        if let Some(s) = state.get_mut::<JobsState>() {
            let cmd = parse_command(msg, &s.settings);
            s.pending.push_back((cmd, now));
        }
        // One call per message: the engine's rate limit takes its token.
        Exchange::call(Op::Heartbeat)
    }

    fn next_deadline(&self, state: &SessionState) -> Option<Instant> {
        state.get::<JobsState>().and_then(JobsState::next_deadline)
    }

    fn on_deadline(
        &self,
        state: &mut SessionState,
        now: Instant,
        reply: &mut ReplyWriter,
    ) -> Option<super::adapter::Close> {
        if let Some(s) = state.get_mut::<JobsState>() {
            for text in s.poll_due(now) {
                reply.text_frame(text.as_bytes());
            }
        }
        None
    }

    fn write_answer(
        &self,
        state: &mut SessionState,
        reply: &mut ReplyWriter,
        _id: Option<&[u8]>,
        answer: Answer<'_>,
    ) {
        let Some(s) = state.get_mut::<JobsState>() else {
            return;
        };
        let Some((cmd, now)) = s.pending.pop_front() else {
            return;
        };
        let out = match answer {
            Answer::Done { result: Ok(_), .. } => s.handle_command(cmd, now),
            Answer::Done { result: Err(e), .. } => vec![s.error(&e.to_string())],
            Answer::Rejected(e) => vec![s.error(&e.message)],
        };
        let mut frames = out.into_iter();
        if let Some(first) = frames.next() {
            reply.raw(first.as_bytes());
        }
        for more in frames {
            reply.text_frame(more.as_bytes());
        }
    }
}

/// The configuration a session needs.
#[derive(Debug, Clone, Copy)]
struct Settings {
    max_seconds: u64,
    max_jobs: usize,
    python: bool,
}

impl From<&Config> for Settings {
    fn from(cfg: &Config) -> Self {
        let j = &cfg.protocols.jobs;
        Settings {
            max_seconds: j.max_job_seconds,
            max_jobs: j.max_jobs_per_connection,
            python: j.replies == JobReplies::Python,
        }
    }
}

/// A job's name as the client gave it: its text, and whether it was a
/// JSON number (the demo's status then shows it unquoted: `{5: 3}`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct JobId {
    text: Rc<str>,
    numeric: bool,
}

/// A parsed client message.
#[derive(Debug, Clone, PartialEq)]
enum Command {
    Request {
        id: JobId,
        seconds: f64,
    },
    Kill {
        id: JobId,
    },
    Status,
    /// Refused with this message.
    Invalid(String),
}

fn parse_command(msg: &[u8], settings: &Settings) -> Command {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(msg) else {
        return Command::Invalid("message is not a JSON object".into());
    };
    let route = map.get("route").and_then(Value::as_str);
    if !matches!(route, Some("request" | "kill")) {
        // The demo answers any other route, or none, with the status.
        return Command::Status;
    }
    let route = route.unwrap_or_default();
    let id = match map.get("connid") {
        None | Some(Value::Null) => return Command::Invalid(format!("{route} needs a connid")),
        Some(Value::String(s)) => JobId {
            text: Rc::from(s.as_str()),
            numeric: false,
        },
        Some(Value::Number(n)) => JobId {
            text: Rc::from(n.to_string()),
            numeric: true,
        },
        Some(_) => return Command::Invalid("connid must be a string or a number".into()),
    };
    if id.text.chars().count() > MAX_CONNID_CHARS {
        return Command::Invalid(format!(
            "connid is longer than {MAX_CONNID_CHARS} characters"
        ));
    }
    if route == "kill" {
        return Command::Kill { id };
    }
    match parse_time(map.get("time"), settings.max_seconds) {
        Ok(seconds) => Command::Request { id, seconds },
        Err(e) => Command::Invalid(e),
    }
}

/// `time`: a number, or a string holding one (the page sends the text of
/// an `<input>`), from 0 to `max` seconds; fractions allowed.
fn parse_time(v: Option<&Value>, max: u64) -> Result<f64, String> {
    let bad = |got: &Value| {
        let mut got = got.to_string();
        if got.len() > 40 {
            let cut = (0..=37)
                .rev()
                .find(|&i| got.is_char_boundary(i))
                .unwrap_or(0);
            got.truncate(cut);
            got.push_str("...");
        }
        format!("time must be a number of seconds from 0 to {max} (got {got})")
    };
    let seconds = match v {
        None | Some(Value::Null) => return Err("request needs a time (seconds)".into()),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match seconds {
        Some(t) if t.is_finite() && (0.0..=max as f64).contains(&t) => Ok(t),
        _ => Err(bad(v.unwrap_or(&Value::Null))),
    }
}

/// Where one job of this connection stands: its deadline and start order.
type DueKey = (Instant, u64);

/// One connection's jobs.
pub struct JobsState {
    settings: Settings,
    /// Running jobs by connid.
    by_id: HashMap<Rc<str>, (DueKey, bool)>,
    /// The same jobs by deadline, then start order.
    by_due: BTreeMap<DueKey, JobId>,
    started: u64,
    /// Parsed messages waiting for their rate-limit token (see the module
    /// doc), with the time each arrived.
    pending: VecDeque<(Command, Instant)>,
    /// In global scope: the node-wide table and this session's place in it.
    global: Option<GlobalLink>,
}

/// A global-scope session's link to the table.
struct GlobalLink {
    table: &'static GlobalTable,
    owner: u64,
    waker: Option<Arc<dyn SessionWake>>,
}

impl JobsState {
    fn new(settings: Settings, global: Option<&'static GlobalTable>) -> Self {
        static OWNERS: AtomicU64 = AtomicU64::new(1);
        JobsState {
            settings,
            by_id: HashMap::new(),
            by_due: BTreeMap::new(),
            started: 0,
            pending: VecDeque::new(),
            global: global.map(|table| GlobalLink {
                table,
                owner: OWNERS.fetch_add(1, Ordering::Relaxed),
                waker: None,
            }),
        }
    }

    /// Jobs running on this connection.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.by_due.keys().next().map(|(due, _)| *due)
    }

    fn status_word(&self, word: &str) -> String {
        if self.settings.python {
            format!("{{'status':'{word}'}}")
        } else {
            format!("{{\"status\":\"{word}\"}}")
        }
    }

    fn error(&self, message: &str) -> String {
        if self.settings.python {
            format!("{{'status':'error','message':{}}}", py_str(message, false))
        } else {
            format!(
                "{{\"status\":\"error\",\"message\":{}}}",
                serde_json::Value::from(message)
            )
        }
    }

    /// Runs one command at `now`: the replies to send, in order.
    fn handle_command(&mut self, cmd: Command, now: Instant) -> Vec<String> {
        match cmd {
            Command::Invalid(e) => vec![self.error(&e)],
            Command::Status => vec![self.status(now)],
            Command::Request { id, seconds } => match self.request(id, seconds, now) {
                Ok(None) => Vec::new(),
                Ok(Some(done)) => vec![done],
                Err(e) => vec![self.error(&e)],
            },
            Command::Kill { id } => self.kill(&id.text),
        }
    }

    fn request(&mut self, id: JobId, seconds: f64, now: Instant) -> Result<Option<String>, String> {
        let duplicate = || format!("connid {} is already running", quoted(&id.text));
        if self.by_id.contains_key(&id.text) {
            return Err(duplicate());
        }
        let mut table = self.global.as_ref().map(|g| g.table.lock());
        if let Some(t) = &table {
            if t.jobs.contains_key(&*id.text) {
                return Err(duplicate());
            }
        }
        if seconds <= 0.0 {
            // The demo answers a job of no time at once.
            return Ok(Some(self.status_word("Ok")));
        }
        if self.by_id.len() >= self.settings.max_jobs {
            return Err(format!(
                "too many jobs: at most {} per connection",
                self.settings.max_jobs
            ));
        }
        let due = now + Duration::from_secs_f64(seconds);
        self.started += 1;
        let key = (due, self.started);
        if let (Some(t), Some(g)) = (&mut table, &self.global) {
            t.jobs.insert(
                Box::from(&*id.text),
                GlobalJob {
                    owner: g.owner,
                    key,
                    numeric: id.numeric,
                },
            );
            t.owners.entry(g.owner).or_insert_with(|| Owner {
                waker: g.waker.clone(),
                killed: Vec::new(),
            });
        }
        drop(table);
        self.by_id.insert(id.text.clone(), (key, id.numeric));
        self.by_due.insert(key, id);
        Ok(None)
    }

    /// Removes one of this connection's own jobs from its timer.
    fn forget(&mut self, id: &str) -> bool {
        match self.by_id.remove(id) {
            Some((key, _)) => {
                self.by_due.remove(&key);
                true
            }
            None => false,
        }
    }

    fn kill(&mut self, id: &str) -> Vec<String> {
        let ok = self.status_word("Ok");
        let killed = self.status_word("Killed");
        let invalid = self.status_word("Invalid connection Id");
        let Some(g) = &self.global else {
            return match self.forget(id) {
                true => vec![ok, killed],
                false => vec![invalid],
            };
        };
        let mut t = g.table.lock();
        let Some(job) = t.jobs.remove(id) else {
            return vec![invalid];
        };
        if job.owner == g.owner {
            drop(t);
            self.forget(id);
            return vec![ok, killed];
        }
        let waker = t.owners.get_mut(&job.owner).and_then(|o| {
            o.killed.push(Box::from(id));
            o.waker.clone()
        });
        drop(t);
        if let Some(w) = waker {
            w.wake();
        }
        vec![ok]
    }

    /// What fell due by `now` (and, in global scope, what others killed):
    /// one reply per job, killed ones first, then due ones in deadline order.
    fn poll_due(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        let g = self.global.as_ref().map(|g| (g.table, g.owner));
        let mut table = g.map(|(table, owner)| (table.lock(), owner));
        if let Some((t, owner)) = &mut table {
            let killed = t
                .owners
                .get_mut(owner)
                .map(|o| std::mem::take(&mut o.killed))
                .unwrap_or_default();
            for id in killed {
                if self.forget(&id) {
                    out.push(self.status_word("Killed"));
                }
            }
        }
        while let Some(entry) = self.by_due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            self.by_id.remove(&id.text);
            if let Some((t, _)) = &mut table {
                t.jobs.remove(&*id.text);
            }
            out.push(self.status_word("Ok"));
        }
        out
    }

    /// The status reply: the visible jobs and their whole seconds left
    /// (rounded up), earliest deadline first, at most [`STATUS_MAX_JOBS`].
    fn status(&self, now: Instant) -> String {
        let mut jobs: Vec<(DueKey, &str, bool)> = Vec::new();
        let guard;
        match &self.global {
            None => jobs.extend(
                self.by_due
                    .iter()
                    .take(STATUS_MAX_JOBS)
                    .map(|(key, id)| (*key, &*id.text, id.numeric)),
            ),
            Some(g) => {
                guard = g.table.lock();
                jobs.extend(guard.jobs.iter().map(|(id, j)| (j.key, &**id, j.numeric)));
                let order = |a: &(DueKey, &str, bool), b: &(DueKey, &str, bool)| {
                    a.0 .0.cmp(&b.0 .0).then(a.1.cmp(b.1))
                };
                if jobs.len() > STATUS_MAX_JOBS {
                    jobs.select_nth_unstable_by(STATUS_MAX_JOBS, order);
                    jobs.truncate(STATUS_MAX_JOBS);
                }
                jobs.sort_by(order);
            }
        }
        let mut out = String::from("{");
        for (i, (key, id, numeric)) in jobs.iter().enumerate() {
            let left = seconds_left(key.0, now);
            if self.settings.python {
                let sep = if i == 0 { "" } else { ", " };
                let key = if *numeric {
                    id.to_string()
                } else {
                    py_str(id, true)
                };
                let _ = write!(out, "{sep}{key}: {left}");
            } else {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(out, "{sep}{}:{left}", Value::from(*id));
            }
        }
        out.push('}');
        out
    }
}

impl Drop for JobsState {
    /// The connection is gone: its jobs are cancelled, and in global scope
    /// leave the table with its inbox.
    fn drop(&mut self) {
        if let Some(g) = &self.global {
            let mut t = g.table.lock();
            for id in self.by_id.keys() {
                if t.jobs.get(&**id).is_some_and(|j| j.owner == g.owner) {
                    t.jobs.remove(&**id);
                }
            }
            t.owners.remove(&g.owner);
        }
    }
}

/// Whole seconds from `now` to `due`, rounded up (what the demo's
/// once-a-second countdown shows).
fn seconds_left(due: Instant, now: Instant) -> u64 {
    let d = due.saturating_duration_since(now);
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `"text"`, for error messages.
fn quoted(text: &str) -> String {
    Value::from(text).to_string()
}

/// Python 2's repr of a string (`u'a1'` for a unicode one): single quotes
/// unless the text holds a single quote and no double quote.
fn py_str(s: &str, unicode: bool) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 3);
    if unicode {
        out.push('u');
    }
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0x100).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) >= 0x100 && (c as u32) < 0x10000 && unicode => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) >= 0x10000 && unicode => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// The node-wide job table of `scope = "global"` (see the module doc).
pub struct GlobalTable {
    inner: Mutex<GlobalInner>,
}

#[derive(Default)]
struct GlobalInner {
    jobs: HashMap<Box<str>, GlobalJob>,
    owners: HashMap<u64, Owner>,
}

struct GlobalJob {
    owner: u64,
    key: DueKey,
    numeric: bool,
}

/// A session with jobs in the table.
struct Owner {
    waker: Option<Arc<dyn SessionWake>>,
    /// Its jobs that others killed, not yet answered.
    killed: Vec<Box<str>>,
}

impl GlobalTable {
    fn new() -> Self {
        GlobalTable {
            inner: Mutex::new(GlobalInner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GlobalInner> {
        // A panic while holding the lock leaves consistent maps behind
        // (every update is a single insert or remove): keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Jobs in the table.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

static GLOBAL: LazyLock<GlobalTable> = LazyLock::new(GlobalTable::new);

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    const JSON: Settings = Settings {
        max_seconds: 3600,
        max_jobs: 3,
        python: false,
    };
    const PY: Settings = Settings {
        python: true,
        ..JSON
    };

    fn t0() -> Instant {
        Instant::now()
    }

    fn ms(t: Instant, ms: u64) -> Instant {
        t + Duration::from_millis(ms)
    }

    fn send(s: &mut JobsState, msg: &str, now: Instant) -> Vec<String> {
        s.handle_command(parse_command(msg.as_bytes(), &s.settings), now)
    }

    fn leaked_table() -> &'static GlobalTable {
        Box::leak(Box::new(GlobalTable::new()))
    }

    #[derive(Default)]
    struct CountingWake(AtomicUsize);

    impl SessionWake for CountingWake {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn request_completes_at_its_deadline_and_not_before() {
        let t = t0();
        let mut s = JobsState::new(JSON, None);
        assert!(send(&mut s, r#"{"connid":"a1","time":"2","route":"request"}"#, t).is_empty());
        assert_eq!(s.next_deadline(), Some(ms(t, 2000)));
        assert!(s.poll_due(ms(t, 1999)).is_empty());
        assert_eq!(
            send(&mut s, r#"{"route":"status"}"#, ms(t, 500)),
            [r#"{"a1":2}"#]
        );
        assert_eq!(s.poll_due(ms(t, 2000)), [r#"{"status":"Ok"}"#]);
        assert_eq!(s.next_deadline(), None);
        assert_eq!(send(&mut s, r#"{"route":"status"}"#, ms(t, 2001)), ["{}"]);
    }

    #[test]
    fn jobs_fall_due_in_deadline_order_and_together() {
        let t = t0();
        let mut s = JobsState::new(PY, None);
        send(&mut s, r#"{"connid":"late","time":3,"route":"request"}"#, t);
        send(
            &mut s,
            r#"{"connid":"early","time":"1","route":"request"}"#,
            t,
        );
        send(&mut s, r#"{"connid":7,"time":1.5,"route":"request"}"#, t);
        assert_eq!(s.next_deadline(), Some(ms(t, 1000)));
        assert_eq!(
            send(&mut s, r#"{"route":"nope"}"#, ms(t, 100)),
            ["{u'early': 1, 7: 2, u'late': 3}"]
        );
        // All three fall due at once: one Ok each, earliest first.
        assert_eq!(s.poll_due(ms(t, 5000)).len(), 3);
        assert!(s.is_empty());
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn kill_before_and_after_completion() {
        let t = t0();
        let mut s = JobsState::new(JSON, None);
        send(&mut s, r#"{"connid":"a","time":"1","route":"request"}"#, t);
        send(&mut s, r#"{"connid":"b","time":"1","route":"request"}"#, t);
        assert_eq!(
            send(&mut s, r#"{"connid":"a","route":"kill"}"#, ms(t, 999)),
            [r#"{"status":"Ok"}"#, r#"{"status":"Killed"}"#]
        );
        // The kill arrives after b fell due but before the timer ran: the
        // deadline has passed, yet b is still running until answered, so
        // the kill wins and b never completes.
        assert_eq!(
            send(&mut s, r#"{"connid":"b","route":"kill"}"#, ms(t, 1001)),
            [r#"{"status":"Ok"}"#, r#"{"status":"Killed"}"#]
        );
        assert!(s.poll_due(ms(t, 2000)).is_empty());
        // Completed, then killed: too late.
        send(&mut s, r#"{"connid":"c","time":"1","route":"request"}"#, t);
        assert_eq!(s.poll_due(ms(t, 1000)), [r#"{"status":"Ok"}"#]);
        assert_eq!(
            send(&mut s, r#"{"connid":"c","route":"kill"}"#, ms(t, 1000)),
            [r#"{"status":"Invalid connection Id"}"#]
        );
    }

    #[test]
    fn duplicate_cap_and_bad_input_are_errors_that_start_nothing() {
        let t = t0();
        let mut s = JobsState::new(JSON, None);
        send(&mut s, r#"{"connid":"a","time":"5","route":"request"}"#, t);
        let cases = [
            (
                r#"{"connid":"a","time":"1","route":"request"}"#,
                r#"connid \"a\" is already running"#,
            ),
            (
                r#"{"connid":"x","time":"abc","route":"request"}"#,
                r#"time must be a number of seconds from 0 to 3600 (got \"abc\")"#,
            ),
            (
                r#"{"connid":"x","time":"-1","route":"request"}"#,
                r#"time must be a number of seconds from 0 to 3600 (got \"-1\")"#,
            ),
            (
                r#"{"connid":"x","time":3601,"route":"request"}"#,
                r#"time must be a number of seconds from 0 to 3600 (got 3601)"#,
            ),
            (
                r#"{"connid":"x","time":"NaN","route":"request"}"#,
                r#"time must be a number of seconds from 0 to 3600 (got \"NaN\")"#,
            ),
            (
                r#"{"connid":"x","time":true,"route":"request"}"#,
                r#"time must be a number of seconds from 0 to 3600 (got true)"#,
            ),
            (
                r#"{"connid":"x","route":"request"}"#,
                "request needs a time (seconds)",
            ),
            (
                r#"{"time":"1","route":"request"}"#,
                "request needs a connid",
            ),
            (r#"{"route":"kill"}"#, "kill needs a connid"),
            (
                r#"{"connid":[1],"route":"kill"}"#,
                "connid must be a string or a number",
            ),
            ("not json", "message is not a JSON object"),
            ("[1,2]", "message is not a JSON object"),
        ];
        for (msg, want) in cases {
            let got = send(&mut s, msg, t);
            assert_eq!(
                got,
                [format!(r#"{{"status":"error","message":"{want}"}}"#)],
                "{msg}"
            );
        }
        let long = "x".repeat(MAX_CONNID_CHARS + 1);
        let got = send(
            &mut s,
            &format!(r#"{{"connid":"{long}","time":1,"route":"request"}}"#),
            t,
        );
        assert_eq!(
            got,
            [r#"{"status":"error","message":"connid is longer than 128 characters"}"#]
        );
        assert_eq!(s.len(), 1);
        // The cap: three jobs, the fourth refused.
        send(&mut s, r#"{"connid":"b","time":"5","route":"request"}"#, t);
        send(&mut s, r#"{"connid":"c","time":"5","route":"request"}"#, t);
        assert_eq!(
            send(&mut s, r#"{"connid":"d","time":"5","route":"request"}"#, t),
            [r#"{"status":"error","message":"too many jobs: at most 3 per connection"}"#]
        );
        assert_eq!(s.len(), 3);
        // A job of no time is answered at once, as the demo does.
        assert_eq!(
            send(&mut s, r#"{"connid":"z","time":"0","route":"request"}"#, t),
            [r#"{"status":"Ok"}"#]
        );
    }

    #[test]
    fn python_replies_are_the_demos_strings() {
        let t = t0();
        let mut s = JobsState::new(PY, None);
        send(&mut s, r#"{"connid":"a1","time":"2","route":"request"}"#, t);
        assert_eq!(
            send(&mut s, r#"{"connid":"q","route":"status"}"#, t),
            ["{u'a1': 2}"]
        );
        assert_eq!(
            send(&mut s, r#"{"connid":"zz","route":"kill"}"#, t),
            ["{'status':'Invalid connection Id'}"]
        );
        assert_eq!(
            send(&mut s, r#"{"connid":"a1","time":"2","route":"request"}"#, t),
            [r#"{'status':'error','message':'connid "a1" is already running'}"#]
        );
        assert_eq!(
            send(&mut s, r#"{"connid":"a1","route":"kill"}"#, t),
            ["{'status':'Ok'}", "{'status':'Killed'}"]
        );
        assert_eq!(py_str("it's", true), r#"u"it's""#);
        assert_eq!(py_str("a'b\"c\\é€", true), r#"u'a\'b"c\\\xe9\u20ac'"#);
    }

    #[test]
    fn global_scope_kill_wakes_the_owner_who_answers_killed() {
        let table = leaked_table();
        let t = t0();
        let mut owner = JobsState::new(JSON, Some(table));
        let wake = Arc::new(CountingWake::default());
        owner.global.as_mut().unwrap().waker = Some(wake.clone());
        let mut other = JobsState::new(JSON, Some(table));
        send(
            &mut owner,
            r#"{"connid":"a","time":"10","route":"request"}"#,
            t,
        );
        send(
            &mut owner,
            r#"{"connid":"b","time":"1","route":"request"}"#,
            t,
        );
        // The other connection sees the shared table and cannot reuse a name.
        assert_eq!(
            send(&mut other, r#"{"route":"status"}"#, t),
            [r#"{"b":1,"a":10}"#]
        );
        assert_eq!(
            send(
                &mut other,
                r#"{"connid":"a","time":"1","route":"request"}"#,
                t
            ),
            [r#"{"status":"error","message":"connid \"a\" is already running"}"#]
        );
        assert_eq!(
            send(&mut other, r#"{"connid":"a","route":"kill"}"#, ms(t, 10)),
            [r#"{"status":"Ok"}"#]
        );
        assert_eq!(wake.0.load(Ordering::SeqCst), 1);
        // Woken before any deadline: the owner answers the kill only.
        assert_eq!(owner.poll_due(ms(t, 11)), [r#"{"status":"Killed"}"#]);
        assert_eq!(owner.len(), 1);
        assert_eq!(
            send(&mut other, r#"{"connid":"a","route":"kill"}"#, ms(t, 12)),
            [r#"{"status":"Invalid connection Id"}"#]
        );
        // Kill racing completion: b is due, the owner has not run yet, the
        // killer takes the lock first and wins; both deadlines then find it
        // gone and answer Killed once.
        assert_eq!(
            send(&mut other, r#"{"connid":"b","route":"kill"}"#, ms(t, 1005)),
            [r#"{"status":"Ok"}"#]
        );
        assert_eq!(owner.poll_due(ms(t, 1006)), [r#"{"status":"Killed"}"#]);
        assert!(owner.poll_due(ms(t, 5000)).is_empty());
        assert!(table.is_empty());
    }

    #[test]
    fn global_completion_first_then_kill_is_invalid() {
        let table = leaked_table();
        let t = t0();
        let mut owner = JobsState::new(JSON, Some(table));
        let mut other = JobsState::new(JSON, Some(table));
        send(
            &mut owner,
            r#"{"connid":"a","time":"1","route":"request"}"#,
            t,
        );
        assert_eq!(owner.poll_due(ms(t, 1000)), [r#"{"status":"Ok"}"#]);
        assert_eq!(
            send(&mut other, r#"{"connid":"a","route":"kill"}"#, ms(t, 1001)),
            [r#"{"status":"Invalid connection Id"}"#]
        );
        // The name is free again, for anyone.
        assert!(send(
            &mut other,
            r#"{"connid":"a","time":"1","route":"request"}"#,
            t
        )
        .is_empty());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_closed_connection_leaves_the_global_table() {
        let table = leaked_table();
        let t = t0();
        let mut owner = JobsState::new(JSON, Some(table));
        let mut other = JobsState::new(JSON, Some(table));
        send(
            &mut owner,
            r#"{"connid":"a","time":"5","route":"request"}"#,
            t,
        );
        send(
            &mut owner,
            r#"{"connid":"b","time":"5","route":"request"}"#,
            t,
        );
        send(
            &mut other,
            r#"{"connid":"c","time":"5","route":"request"}"#,
            t,
        );
        assert_eq!(table.len(), 3);
        drop(owner);
        assert_eq!(table.len(), 1);
        assert_eq!(send(&mut other, r#"{"route":"status"}"#, t), [r#"{"c":5}"#]);
        assert!(table.lock().owners.len() <= 1);
    }

    #[test]
    fn status_lists_at_most_the_earliest_jobs() {
        let table = leaked_table();
        let t = t0();
        let many = Settings {
            max_jobs: 2 * STATUS_MAX_JOBS,
            ..JSON
        };
        for global in [None, Some(table)] {
            let mut s = JobsState::new(many, global);
            for i in (0..STATUS_MAX_JOBS + 10).rev() {
                let time = (i + 1) as f64 / 10.0;
                let msg = format!(r#"{{"connid":"j{i}","time":{time},"route":"request"}}"#);
                assert!(send(&mut s, &msg, t).is_empty());
            }
            let status = send(&mut s, r#"{"route":"status"}"#, t).remove(0);
            let v: serde_json::Map<String, Value> = serde_json::from_str(&status).unwrap();
            assert_eq!(v.len(), STATUS_MAX_JOBS);
            assert!(
                status.starts_with(r#"{"j0":1,"j1":1,"#),
                "{}",
                &status[..40]
            );
            assert!(!v.contains_key(&format!("j{STATUS_MAX_JOBS}")));
        }
    }

    #[test]
    fn rate_limited_messages_start_nothing() {
        let cfg = Config::default();
        let mut state = Jobs.open(&cfg);
        let t = t0();
        let msg = br#"{"connid":"a","time":"5","route":"request"}"#;
        let ex = Jobs.handle_message(&mut state, msg, &mut RpcParser::new(), t);
        assert_eq!(ex.calls.len(), 1);
        let mut reply = ReplyWriter::new(false);
        let op = Op::Heartbeat;
        let peer = || String::new();
        Jobs.write_answer(
            &mut state,
            &mut reply,
            None,
            Answer::Done {
                op: &op,
                result: Err(crate::pubsub::ops::OpError::RateLimited),
                peer: &peer,
            },
        );
        assert_eq!(
            reply.finish().unwrap(),
            br#"{"status":"error","message":"rate limited"}"#
        );
        assert_eq!(Jobs.next_deadline(&state), None);
    }
}
