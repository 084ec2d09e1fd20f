//! `ringcast shell`: a console for the backend port (RocketWS's shell).
//!
//! Each command becomes one JSON-RPC 2.0 request `POST {url}/` on the
//! backend port (SPEC section 4). Interactive with line editing, completion
//! of command names and a history file (`$HOME/.ringcast_history`) when stdin
//! is a terminal; reads commands line by line, with no prompt and no banner,
//! when stdin is a pipe, and then exits non-zero if any command failed.
//!
//! HTTP is `ureq`'s blocking client: one keep-alive connection, reopened
//! when the server closed it.
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

/// The prompt shown on a terminal.
pub const PROMPT: &str = "ringcast> ";

/// The backend port's default URL (RocketWS's default port).
pub const DEFAULT_URL: &str = "http://127.0.0.1:59999";

/// Name of the history file, in `$HOME`.
const HISTORY_FILE: &str = ".ringcast_history";

/// How long to wait for a TCP connection to the backend port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for the server's answer to one request.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response header section accepted, in bytes.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Largest response body accepted, in bytes.
const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// How much of a non-JSON error body is shown.
const MAX_SHOWN_BODY: usize = 512;

/// Command names, for `help` and tab completion.
const COMMANDS: &[&str] = &[
    "emit",
    "notify_all",
    "total_subscribers",
    "available_channels",
    "ping",
    "info",
    "help",
    "exit",
    "quit",
];

const HELP: &str = "\
commands:
  emit CHANNEL JSON           publish JSON to CHANNEL's subscribers
  notify_all JSON             send JSON to every connection once
  total_subscribers [CHANNEL] subscribers of CHANNEL, or of all channels
  available_channels          channels that have subscribers, with counts
  ping                        check that the server answers
  info                        per-shard connections, subscriptions, counters
  help                        this text
  exit, quit                  leave (Ctrl-D too)
JSON is everything after the command (and channel), e.g.
  emit news {\"title\": \"hello\", \"n\": 1}";

/// Runs the shell against the backend port at `url` and returns the
/// process exit code: 0, 1 when a command failed (pipe mode only) or 2 for a
/// bad `url`.
pub fn run(url: &str, token: Option<&str>) -> i32 {
    let endpoint = match Endpoint::parse(url) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            eprintln!("error: invalid --url {url:?}: {e}");
            return 2;
        }
    };
    let mut shell = Shell::new(Client::new(endpoint, token.map(str::to_owned)));
    if io::stdin().is_terminal() {
        run_interactive(&mut shell)
    } else {
        let stdin = io::stdin();
        let stdout = io::stdout();
        let stderr = io::stderr();
        run_script(
            &mut shell,
            stdin.lock(),
            &mut stdout.lock(),
            &mut stderr.lock(),
        )
    }
}

/// Pipe mode: one command per line, no prompt, no banner. Results go to
/// `out`, errors to `err`. Returns 1 if any command failed, else 0.
pub fn run_script(
    shell: &mut Shell,
    input: impl BufRead,
    out: &mut impl Write,
    err: &mut impl Write,
) -> i32 {
    let mut failed = false;
    for line in input.lines() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                let _ = writeln!(err, "error: cannot read standard input: {e}");
                failed = true;
                break;
            }
        };
        match shell.execute_line(&line) {
            Step::Output(text) => {
                let _ = writeln!(out, "{text}");
            }
            Step::Failed(text) => {
                let _ = writeln!(err, "{text}");
                failed = true;
            }
            Step::Nothing => {}
            Step::Exit => break,
        }
        let _ = out.flush();
    }
    i32::from(failed)
}

/// Terminal mode: line editing, completion and history. Returns 0.
fn run_interactive(shell: &mut Shell) -> i32 {
    let config = rustyline::Config::builder()
        .auto_add_history(false)
        .history_ignore_dups(true)
        .and_then(|b| b.max_history_size(1000))
        .map(|b| b.build());
    let editor = config.and_then(rustyline::Editor::<CommandHelper, _>::with_config);
    let mut editor = match editor {
        Ok(editor) => editor,
        Err(e) => {
            // No usable terminal after all: behave like a pipe.
            eprintln!("warning: line editing unavailable ({e}); reading plain lines");
            let stdin = io::stdin();
            let stdout = io::stdout();
            let stderr = io::stderr();
            run_script(shell, stdin.lock(), &mut stdout.lock(), &mut stderr.lock());
            return 0;
        }
    };
    editor.set_helper(Some(CommandHelper));
    let history = history_path();
    if let Some(path) = &history {
        // A missing file is the normal first run.
        let _ = editor.load_history(path);
    }

    println!(
        "ringcast shell {} — backend {} (type help)",
        env!("CARGO_PKG_VERSION"),
        shell.client.endpoint
    );
    // Say at once if the server is not there, but stay: it may be started.
    if let Err(e) = shell.client.call("ping", None) {
        eprintln!("{e}");
    }

    loop {
        match editor.readline(PROMPT) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.trim());
                }
                match shell.execute_line(&line) {
                    Step::Output(text) => println!("{text}"),
                    Step::Failed(text) => eprintln!("{text}"),
                    Step::Nothing => {}
                    Step::Exit => break,
                }
            }
            // Ctrl-C drops the line being edited, as in a Unix shell.
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("error: cannot read the terminal: {e}");
                break;
            }
        }
    }
    if let Some(path) = &history {
        // Not writable: no history, silently (as bash does).
        let _ = editor.save_history(path);
    }
    0
}

/// `$HOME/.ringcast_history`, when `$HOME` is set.
fn history_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(HISTORY_FILE))
}

/// Tab completion of command names for rustyline.
struct CommandHelper;

impl rustyline::completion::Completer for CommandHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(complete_command(&line[..pos]))
    }
}

impl rustyline::hint::Hinter for CommandHelper {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for CommandHelper {}
impl rustyline::validate::Validator for CommandHelper {}
impl rustyline::Helper for CommandHelper {}

/// Completion candidates for the text before the cursor: command names
/// while the first word is being typed, nothing after it.
fn complete_command(before_cursor: &str) -> (usize, Vec<String>) {
    let start = before_cursor.len() - before_cursor.trim_start().len();
    let word = &before_cursor[start..];
    if word.contains(char::is_whitespace) {
        return (start, Vec::new());
    }
    let candidates = COMMANDS
        .iter()
        .filter(|c| c.starts_with(word))
        .map(|c| (*c).to_owned())
        .collect();
    (start, candidates)
}

/// One parsed shell command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Emit { channel: String, data: Value },
    NotifyAll { data: Value },
    TotalSubscribers { channel: Option<String> },
    AvailableChannels,
    Ping,
    Info,
    Help,
    Exit,
}

impl Command {
    /// The JSON-RPC method and params this command sends; `None` for the
    /// local commands (`help`, `exit`).
    pub fn request(&self) -> Option<(&'static str, Option<Value>)> {
        Some(match self {
            Command::Emit { channel, data } => {
                ("emit", Some(json!({ "channel": channel, "data": data })))
            }
            Command::NotifyAll { data } => ("notify_all", Some(json!({ "data": data }))),
            Command::TotalSubscribers {
                channel: Some(channel),
            } => ("total_subscribers", Some(json!({ "channel": channel }))),
            Command::TotalSubscribers { channel: None } => ("total_subscribers", None),
            Command::AvailableChannels => ("available_channels", None),
            Command::Ping => ("ping", None),
            Command::Info => ("info", None),
            Command::Help | Command::Exit => return None,
        })
    }
}

/// Parses one input line. `Ok(None)` for a blank line or a `#` comment;
/// `Err` holds the complete message to print (starting with `error: `).
pub fn parse_line(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (name, rest) = split_word(line);
    let command = match name {
        "emit" => {
            let (channel, json) = split_word(rest);
            if channel.is_empty() || json.is_empty() {
                return Err(usage("emit CHANNEL JSON"));
            }
            Command::Emit {
                channel: channel.to_owned(),
                data: parse_json("data", json)?,
            }
        }
        "notify_all" => {
            if rest.is_empty() {
                return Err(usage("notify_all JSON"));
            }
            Command::NotifyAll {
                data: parse_json("data", rest)?,
            }
        }
        "total_subscribers" => {
            let (channel, extra) = split_word(rest);
            if !extra.is_empty() {
                return Err(usage("total_subscribers [CHANNEL]"));
            }
            Command::TotalSubscribers {
                channel: (!channel.is_empty()).then(|| channel.to_owned()),
            }
        }
        "available_channels" => no_args(rest, name, Command::AvailableChannels)?,
        "ping" => no_args(rest, name, Command::Ping)?,
        "info" => no_args(rest, name, Command::Info)?,
        "help" | "?" => Command::Help,
        "exit" | "quit" => no_args(rest, name, Command::Exit)?,
        other => return Err(format!("error: unknown command {other:?} (try help)")),
    };
    Ok(Some(command))
}

/// Splits off the first whitespace-separated word; the rest is trimmed.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

fn parse_json(what: &str, text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("error: invalid JSON for {what}: {e}"))
}

fn no_args(rest: &str, name: &str, command: Command) -> Result<Command, String> {
    if rest.is_empty() {
        Ok(command)
    } else {
        Err(format!("error: {name} takes no arguments (usage: {name})"))
    }
}

fn usage(text: &str) -> String {
    format!("error: usage: {text}")
}

/// What one input line led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Print this on stdout.
    Output(String),
    /// Print this on stderr; the command failed.
    Failed(String),
    /// Blank line or comment.
    Nothing,
    /// `exit`, `quit`.
    Exit,
}

/// The shell's state: the backend client.
pub struct Shell {
    client: Client,
}

impl Shell {
    pub fn new(client: Client) -> Self {
        Shell { client }
    }

    /// Parses and runs one line.
    pub fn execute_line(&mut self, line: &str) -> Step {
        match parse_line(line) {
            Ok(Some(command)) => self.execute(&command),
            Ok(None) => Step::Nothing,
            Err(message) => Step::Failed(message),
        }
    }

    /// Runs one command.
    pub fn execute(&mut self, command: &Command) -> Step {
        let Some((method, params)) = command.request() else {
            return match command {
                Command::Exit => Step::Exit,
                _ => Step::Output(HELP.to_owned()),
            };
        };
        match self.client.call(method, params) {
            Ok(result) => Step::Output(
                serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string()),
            ),
            Err(e) => Step::Failed(e.to_string()),
        }
    }
}

/// Where the backend port is: parsed from `--url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host as written (IPv6 with its brackets).
    host: String,
    port: u16,
    /// Request target, `/` unless the URL names a path.
    path: String,
    /// The URL as shown in messages: `http://host:port[/path]`.
    display: String,
}

impl Endpoint {
    /// Parses `http://HOST[:PORT][/PATH]`; the scheme may be left out.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err("https is not supported: the backend port speaks plain HTTP".into())
            }
            Some((scheme, _)) => return Err(format!("unsupported scheme {scheme:?}")),
            None => url,
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err("user info in the URL is not supported; use --token".into());
        }
        let (host, port) = if let Some(after) = authority.strip_prefix('[') {
            let (inside, tail) = after.split_once(']').ok_or("unclosed '[' in host")?;
            (format!("[{inside}]"), tail)
        } else {
            match authority.rfind(':') {
                Some(i) => (authority[..i].to_owned(), &authority[i..]),
                None => (authority.to_owned(), ""),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err("no host".into());
        }
        let port = match port {
            "" => 80,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad port {:?}", p.trim_start_matches(':')))?,
        };
        let path = if path.is_empty() || path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        let mut display = format!("http://{host}:{port}");
        if path != "/" {
            display.push_str(&path);
        }
        Ok(Endpoint {
            host,
            port,
            path,
            display,
        })
    }

    /// `host:port`, as in the URL.
    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// Why a call failed. `Display` gives the one line the shell prints.
#[derive(Debug)]
pub enum CallError {
    /// No TCP connection could be opened.
    Unreachable { url: String, reason: String },
    /// The connection broke or timed out during the exchange.
    Io { url: String, reason: String },
    /// HTTP 401.
    Unauthorized,
    /// Any other HTTP status than 200.
    Http { status: u16, body: String },
    /// A 200 answer that is not a JSON-RPC response.
    BadResponse(String),
    /// A JSON-RPC error object.
    Rpc {
        code: i64,
        message: String,
        data: Option<Value>,
    },
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Unreachable { url, reason } => write!(
                f,
                "error: cannot reach ringcast at {url} ({reason}) — is it running? (ringcast serve)"
            ),
            CallError::Io { url, reason } => {
                write!(f, "error: connection to ringcast at {url} failed: {reason}")
            }
            CallError::Unauthorized => {
                f.write_str("error: unauthorized: the server needs --token (or the token is wrong)")
            }
            CallError::Http { status, body } => write!(f, "error: HTTP {status}: {body}"),
            CallError::BadResponse(what) => {
                write!(f, "error: invalid response from server: {what}")
            }
            CallError::Rpc {
                code,
                message,
                data,
            } => {
                write!(f, "error: {code} {message}")?;
                match data {
                    Some(data) => write!(f, " ({data})"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for CallError {}

/// Short reason for an I/O error, as in "connection refused".
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::UnexpectedEof => "server closed the connection".into(),
        _ => {
            // Drop the "(os error N)" tail std adds.
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_lowercase(),
                None => text,
            }
        }
    }
}

/// A JSON-RPC client for the backend port. HTTP is `ureq`'s: one agent
/// whose pool keeps the connection alive between commands and opens a new
/// one when the server has closed it.
pub struct Client {
    endpoint: Endpoint,
    /// `http://host:port/path`, the URL every request is POSTed to.
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
    next_id: u64,
}

impl Client {
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_call(Some(IO_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_response_header_size(MAX_HEADER_BYTES)
            .user_agent(concat!("ringcast-shell/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            url: format!("http://{}{}", endpoint.authority(), endpoint.path),
            endpoint,
            token: token.filter(|t| !t.is_empty()),
            agent,
            next_id: 1,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends one JSON-RPC request and returns its `result`.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "jsonrpc": "2.0", "id": id, "method": method });
        if let Some(params) = params {
            request["params"] = params;
        }
        let (status, body) = self
            .post(&request.to_string())
            .map_err(|e| self.call_error(e))?;
        answer(status, &body)
    }

    /// POSTs `body`; returns the status and the response body.
    fn post(&self, body: &str) -> Result<(u16, Vec<u8>), ureq::Error> {
        let mut request = self
            .agent
            .post(&self.url)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let mut response = request.send(body)?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_vec()?;
        Ok((status, body))
    }

    /// The one-line error for a failed HTTP exchange: no connection at all
    /// (`Unreachable`), a broken one (`Io`), or a malformed answer.
    fn call_error(&self, e: ureq::Error) -> CallError {
        use ureq::{Error, Timeout};
        let url = self.endpoint.to_string();
        let unreachable = |reason: String| CallError::Unreachable {
            url: url.clone(),
            reason,
        };
        match e {
            Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                unreachable(io_reason(&e))
            }
            Error::HostNotFound => unreachable(format!("cannot resolve {}", self.endpoint.host)),
            Error::ConnectionFailed => unreachable("connection failed".into()),
            Error::Timeout(Timeout::Resolve | Timeout::Connect) => unreachable("timed out".into()),
            Error::Timeout(_) => CallError::Io {
                url,
                reason: "timed out".into(),
            },
            Error::Io(e) => CallError::Io {
                url,
                reason: io_reason(&e),
            },
            Error::BodyExceedsLimit(limit) => {
                CallError::BadResponse(format!("response body larger than {limit} bytes"))
            }
            Error::LargeResponseHeader(..) => {
                CallError::BadResponse("response headers too large".into())
            }
            other => CallError::BadResponse(one_line(&other.to_string())),
        }
    }
}

/// Collapses whitespace runs (including newlines) into single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error body as shown after `HTTP NNN:`: compact JSON, or the text
/// trimmed and cut to a sane length.
fn shown_body(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        return value.to_string();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    match text.char_indices().nth(MAX_SHOWN_BODY) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// What an HTTP answer of the backend port means: the call's result, or
/// the error to show.
fn answer(status: u16, body: &[u8]) -> Result<Value, CallError> {
    match status {
        200 => parse_rpc_response(body),
        401 => Err(CallError::Unauthorized),
        status => Err(CallError::Http {
            status,
            body: shown_body(body),
        }),
    }
}

/// Extracts `result` from a JSON-RPC response body, or its error.
fn parse_rpc_response(body: &[u8]) -> Result<Value, CallError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| CallError::BadResponse(format!("not JSON ({e}): {}", shown_body(body))))?;
    // A single request gets a single response; take the first of a batch.
    let value = match value {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        other => other,
    };
    let Value::Object(mut object) = value else {
        return Err(CallError::BadResponse(format!(
            "not a JSON-RPC response: {value}"
        )));
    };
    if let Some(error) = object.remove("error").filter(|e| !e.is_null()) {
        let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("(no message)")
            .to_owned();
        let data = error.get("data").filter(|d| !d.is_null()).cloned();
        return Err(CallError::Rpc {
            code,
            message,
            data,
        });
    }
    match object.remove("result") {
        Some(result) => Ok(result),
        None => Err(CallError::BadResponse(format!(
            "neither result nor error in {}",
            Value::Object(object)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::net::TcpListener;

    fn parse(line: &str) -> Command {
        parse_line(line).expect("parses").expect("a command")
    }

    fn parse_err(line: &str) -> String {
        parse_line(line).expect_err("fails")
    }

    #[test]
    fn emit_takes_the_rest_of_the_line_as_json() {
        assert_eq!(
            parse(r#"emit chan {"a": 1}"#),
            Command::Emit {
                channel: "chan".into(),
                data: json!({"a": 1})
            }
        );
        assert_eq!(
            parse("  emit   news    {\"title\": \"two  spaces\", \"n\": [1, 2]}  "),
            Command::Emit {
                channel: "news".into(),
                data: json!({"title": "two  spaces", "n": [1, 2]})
            }
        );
        assert_eq!(
            parse("emit\tnews\t\"just a string\""),
            Command::Emit {
                channel: "news".into(),
                data: json!("just a string")
            }
        );
    }

    #[test]
    fn data_may_be_any_json() {
        assert_eq!(
            parse("emit c 42"),
            Command::Emit {
                channel: "c".into(),
                data: json!(42)
            }
        );
        assert_eq!(
            parse("emit c [1,2]"),
            Command::Emit {
                channel: "c".into(),
                data: json!([1, 2])
            }
        );
        assert_eq!(
            parse("notify_all null"),
            Command::NotifyAll { data: Value::Null }
        );
        assert_eq!(
            parse(r#"notify_all {"message": "hola!"}"#),
            Command::NotifyAll {
                data: json!({"message": "hola!"})
            }
        );
    }

    #[test]
    fn invalid_json_is_one_clear_line() {
        assert_eq!(
            parse_err("emit news {oops}"),
            "error: invalid JSON for data: key must be a string at line 1 column 2"
        );
        assert_eq!(
            parse_err("notify_all hello"),
            "error: invalid JSON for data: expected value at line 1 column 1"
        );
        assert_eq!(
            parse_err(r#"emit news {"a": 1} trailing"#),
            "error: invalid JSON for data: trailing characters at line 1 column 10"
        );
        assert!(!parse_err("emit news {\"a\":").contains('\n'));
    }

    #[test]
    fn missing_arguments_show_usage() {
        assert_eq!(parse_err("emit"), "error: usage: emit CHANNEL JSON");
        assert_eq!(parse_err("emit news"), "error: usage: emit CHANNEL JSON");
        assert_eq!(parse_err("notify_all   "), "error: usage: notify_all JSON");
        assert_eq!(
            parse_err("total_subscribers a b"),
            "error: usage: total_subscribers [CHANNEL]"
        );
        assert_eq!(
            parse_err("ping now"),
            "error: ping takes no arguments (usage: ping)"
        );
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            parse("total_subscribers"),
            Command::TotalSubscribers { channel: None }
        );
        assert_eq!(
            parse("total_subscribers news"),
            Command::TotalSubscribers {
                channel: Some("news".into())
            }
        );
        assert_eq!(parse("available_channels"), Command::AvailableChannels);
        assert_eq!(parse("ping"), Command::Ping);
        assert_eq!(parse("info"), Command::Info);
        assert_eq!(parse("help"), Command::Help);
        assert_eq!(parse("exit"), Command::Exit);
        assert_eq!(parse("quit"), Command::Exit);
        assert_eq!(parse_line("").unwrap(), None);
        assert_eq!(parse_line("   \t").unwrap(), None);
        assert_eq!(parse_line("# a comment").unwrap(), None);
    }

    #[test]
    fn unknown_command() {
        assert_eq!(parse_err("x"), r#"error: unknown command "x" (try help)"#);
        assert_eq!(
            parse_err("Emit a 1"),
            r#"error: unknown command "Emit" (try help)"#
        );
    }

    #[test]
    fn requests() {
        let emit = parse(r#"emit news {"a": 1}"#);
        assert_eq!(
            emit.request(),
            Some(("emit", Some(json!({"channel": "news", "data": {"a": 1}}))))
        );
        assert_eq!(
            parse("notify_all [1]").request(),
            Some(("notify_all", Some(json!({"data": [1]}))))
        );
        assert_eq!(
            parse("total_subscribers").request(),
            Some(("total_subscribers", None))
        );
        assert_eq!(
            parse("total_subscribers c").request(),
            Some(("total_subscribers", Some(json!({"channel": "c"}))))
        );
        assert_eq!(
            parse("available_channels").request(),
            Some(("available_channels", None))
        );
        assert_eq!(parse("ping").request(), Some(("ping", None)));
        assert_eq!(parse("info").request(), Some(("info", None)));
        assert_eq!(parse("help").request(), None);
        assert_eq!(parse("exit").request(), None);
    }

    #[test]
    fn completion() {
        assert_eq!(complete_command("em"), (0, vec!["emit".to_owned()]));
        assert_eq!(
            complete_command("  to"),
            (2, vec!["total_subscribers".to_owned()])
        );
        assert_eq!(complete_command("emit ne"), (0, vec![]));
        assert_eq!(complete_command("").1.len(), COMMANDS.len());
    }

    #[test]
    fn urls() {
        let e = Endpoint::parse("http://127.0.0.1:59999").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 59999, "/")
        );
        assert_eq!(e.to_string(), "http://127.0.0.1:59999");
        let e = Endpoint::parse("http://127.0.0.1:59999/").unwrap();
        assert_eq!(e.to_string(), "http://127.0.0.1:59999");
        let e = Endpoint::parse("localhost:8080").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("localhost", 8080));
        let e = Endpoint::parse("HTTP://example.com/rpc").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("example.com", 80, "/rpc")
        );
        assert_eq!(e.to_string(), "http://example.com:80/rpc");
        let e = Endpoint::parse("http://[::1]:5000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("[::1]", 5000));
        assert_eq!(e.authority(), "[::1]:5000");
        assert!(Endpoint::parse("https://x:1")
            .unwrap_err()
            .contains("https"));
        assert!(Endpoint::parse("ftp://x:1").is_err());
        assert!(Endpoint::parse("http://x:notaport").is_err());
        assert!(Endpoint::parse("http://x:0").is_err());
        assert!(Endpoint::parse("http://:80").is_err());
        assert!(Endpoint::parse("").is_err());
    }

    #[test]
    fn rpc_responses() {
        let ok = parse_rpc_response(br#"{"jsonrpc":"2.0","id":1,"result":{"ping":"ok"}}"#);
        assert_eq!(ok.unwrap(), json!({"ping": "ok"}));
        let err = parse_rpc_response(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"invalid params"}}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "error: -32602 invalid params");
        let err = parse_rpc_response(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32002,"message":"limit exceeded","data":{"limit":"x"}}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"error: -32002 limit exceeded ({"limit":"x"})"#
        );
        assert!(matches!(
            parse_rpc_response(b"{'a': 1}"),
            Err(CallError::BadResponse(_))
        ));
        assert!(matches!(
            parse_rpc_response(b"{}"),
            Err(CallError::BadResponse(_))
        ));
    }

    #[test]
    fn error_messages() {
        let e = CallError::Unreachable {
            url: "http://127.0.0.1:59999".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "error: cannot reach ringcast at http://127.0.0.1:59999 (connection refused) — is it running? (ringcast serve)"
        );
        assert_eq!(
            CallError::Unauthorized.to_string(),
            "error: unauthorized: the server needs --token (or the token is wrong)"
        );
        assert_eq!(
            shown_body(b"{\"error\": \"not found\"}"),
            r#"{"error":"not found"}"#
        );
        assert_eq!(shown_body(b"  plain\n"), "plain");
        assert_eq!(shown_body(b""), "(empty body)");
        assert_eq!(shown_body(&[b'a'; 600]).chars().count(), MAX_SHOWN_BODY + 1);
    }

    #[test]
    fn http_answers_are_clear() {
        assert_eq!(
            answer(200, br#"{"jsonrpc":"2.0","id":1,"result":{"ping":"ok"}}"#).unwrap(),
            json!({"ping": "ok"})
        );
        let shown = |status, body: &[u8]| answer(status, body).unwrap_err().to_string();
        assert_eq!(
            shown(401, br#"{"error":"unauthorized"}"#),
            "error: unauthorized: the server needs --token (or the token is wrong)"
        );
        assert_eq!(
            shown(404, br#"{"error": "not found"}"#),
            r#"error: HTTP 404: {"error":"not found"}"#
        );
        assert_eq!(
            shown(
                200,
                br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"method not found"}}"#
            ),
            "error: -32601 method not found"
        );
        assert_eq!(shown(503, b""), "error: HTTP 503: (empty body)");
    }

    fn shell_for(url: &str, token: Option<&str>) -> Shell {
        Shell::new(Client::new(
            Endpoint::parse(url).unwrap(),
            token.map(str::to_owned),
        ))
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn stopped_server_is_reported_and_fails_the_script() {
        let url = format!("http://127.0.0.1:{}", free_port());
        let mut shell = shell_for(&url, None);
        let input = Cursor::new("help\nping\n# comment\n\nemit news {\"a\":1}\n");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_script(&mut shell, input, &mut out, &mut err);
        assert_eq!(code, 1);
        let err = String::from_utf8(err).unwrap();
        let expected = format!(
            "error: cannot reach ringcast at {url} (connection refused) — is it running? (ringcast serve)\n"
        );
        assert_eq!(err, expected.repeat(2));
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("emit CHANNEL JSON"));
    }
}
