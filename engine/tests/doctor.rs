//! `ringcast doctor` on the real host, and the files in `tuning/`: the
//! sysctl script's dry run and apply, and the systemd unit.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ringcast::ops::config::Config;
use ringcast::ops::doctor::{self, Status};

fn tuning_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning")
}

/// A fresh, empty scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringcast-doctor-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn doctor_prints_every_check_and_exits_by_findings() {
    let config = Config::default();
    let facts = doctor::gather_facts();
    assert!(facts.cpus >= 1);
    assert!(facts.nofile.is_some(), "/proc/self/limits unreadable");
    let list = doctor::checks(&config, &facts);
    let table = doctor::render(&config, &facts, &list);
    println!("{table}");
    for check in &list {
        let row = table
            .lines()
            .find(|l| l.contains(check.name))
            .unwrap_or_else(|| panic!("no row for {}:\n{table}", check.name));
        assert!(row.starts_with(check.status.label()), "{row}");
        if check.status != Status::Ok {
            assert!(!check.fix.is_empty(), "{check:?} has no fix");
        }
    }
    let expected = i32::from(list.iter().any(|c| c.status == Status::Fail));
    assert_eq!(doctor::exit_code(&list), expected);
    assert_eq!(doctor::run(&config), expected);
}

/// `ringcast doctor ARGS` (the real binary) under `ulimit -n 256`.
fn doctor_under_ulimit_256(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 256 && exec "$0" doctor "$@""#)
        .arg(env!("CARGO_BIN_EXE_ringcast"))
        .args(args)
        .output()
        .unwrap()
}

/// The open-files row of a doctor run: must be FAIL naming `soft 256`, with
/// a fix line raising the limit to `want`, and the run must exit 1.
fn assert_open_files_blocks(out: &Output, want: u64) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let row = lines
        .by_ref()
        .find(|l| l.contains("open files"))
        .unwrap_or_else(|| panic!("no open files row:\n{all}"));
    assert!(row.starts_with("FAIL"), "{row}");
    assert!(row.contains("soft 256"), "{row}");
    let fix = lines.next().unwrap_or_default();
    assert!(fix.trim_start().starts_with("fix:"), "{fix}");
    assert!(fix.contains(&format!("LimitNOFILE={want}")), "{fix}");
    assert!(fix.contains(&format!("ulimit -Hn {want}")), "{fix}");
    assert!(
        stdout.contains("the configured target is not reachable"),
        "{all}"
    );
}

#[test]
fn low_ulimit_blocks_on_open_files() {
    let out = doctor_under_ulimit_256(&["--max-connections", "10000"]);
    assert_open_files_blocks(&out, 16384);
}

/// With no explicit `limits.max_connections` the doctor checks against
/// its default target (10,000 connections): a limit below it blocks too.
#[test]
fn low_ulimit_blocks_for_the_default_target() {
    let out = doctor_under_ulimit_256(&[]);
    assert_open_files_blocks(&out, 16384);
}

/// `key = value` pairs of the shipped sysctl file, values with whitespace
/// collapsed.
fn sysctl_keys() -> Vec<(String, String)> {
    let conf = fs::read_to_string(tuning_dir().join("sysctl.d/90-ringcast.conf")).unwrap();
    conf.lines()
        .map(|l| l.split('#').next().unwrap())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v: Vec<&str> = v.split_whitespace().collect();
            (k.trim().to_owned(), v.join(" "))
        })
        .collect()
}

fn read_sysctl(root: &Path, key: &str) -> Option<String> {
    let raw = fs::read_to_string(root.join(key.replace('.', "/"))).ok()?;
    Some(raw.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// A `sysctl` stand-in first in PATH: logs its arguments and, for
/// `-w key=value`, writes the value under `$RINGCAST_PROC_SYS`.
fn fake_sysctl(dir: &Path) -> (PathBuf, PathBuf) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let log = dir.join("sysctl.log");
    let script = bin.join("sysctl");
    fs::write(
        &script,
        r#"#!/bin/sh
echo "$*" >> "$FAKE_SYSCTL_LOG"
for a in "$@"; do
    case "$a" in
    *=*) printf '%s\n' "${a#*=}" > "$RINGCAST_PROC_SYS/$(echo "${a%%=*}" | tr . /)" ;;
    esac
done
"#,
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    (PathBuf::from(path), log)
}

fn apply_sh(args: &[&str], path: &Path, log: &Path, proc_sys: Option<&Path>) -> Output {
    let mut cmd = Command::new(tuning_dir().join("apply.sh"));
    cmd.args(args).env("PATH", path).env("FAKE_SYSCTL_LOG", log);
    if let Some(root) = proc_sys {
        cmd.env("RINGCAST_PROC_SYS", root);
    }
    cmd.output().unwrap()
}

#[test]
fn apply_sh_dry_run_prints_every_key_and_changes_nothing() {
    let keys = sysctl_keys();
    assert!(keys.len() >= 10, "{keys:?}");
    let dir = scratch("dry");
    let (path, log) = fake_sysctl(&dir);
    let proc_sys = Path::new("/proc/sys");
    let before: Vec<_> = keys.iter().map(|(k, _)| read_sysctl(proc_sys, k)).collect();

    let out = apply_sh(&[], &path, &log, None);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (key, wanted) in &keys {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("{key} missing:\n{all}"));
        if !row.contains("skip") {
            assert!(row.contains(wanted.split(' ').next().unwrap()), "{row}");
        }
    }
    assert!(stdout.contains("dry run: nothing changed"), "{all}");
    assert!(!log.exists(), "dry run called sysctl:\n{all}");
    let after: Vec<_> = keys.iter().map(|(k, _)| read_sysctl(proc_sys, k)).collect();
    assert_eq!(before, after);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn apply_sh_apply_sets_raises_and_skips_on_a_fake_proc_sys() {
    let keys = sysctl_keys();
    let dir = scratch("apply");
    let (path, log) = fake_sysctl(&dir);
    let root = dir.join("proc-sys");
    let sysctl_d = dir.join("sysctl.d");
    fs::create_dir_all(&sysctl_d).unwrap();
    // Kernel defaults, except: file-max already higher (kept), conntrack
    // not loaded (skipped).
    for (key, value) in [
        ("fs.nr_open", "1048576"),
        ("fs.file-max", "9223372036854775807"),
        ("net.core.somaxconn", "4096"),
        ("net.ipv4.tcp_max_syn_backlog", "512"),
        ("net.core.netdev_max_backlog", "1000"),
        ("net.ipv4.ip_local_port_range", "32768\t60999"),
        ("net.ipv4.tcp_mem", "92160\t122880\t184320"),
        ("net.ipv4.tcp_rmem", "4096\t131072\t33554432"),
        ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
    ] {
        let file = root.join(key.replace('.', "/"));
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, format!("{value}\n")).unwrap();
    }
    // Dry run against the fake tree first: nothing written.
    let out = apply_sh(&[], &path, &log, Some(&root));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(read_sysctl(&root, "fs.nr_open").as_deref(), Some("1048576"));
    assert!(!log.exists());

    let out = Command::new(tuning_dir().join("apply.sh"))
        .args(["--apply", "--persist"])
        .env("PATH", &path)
        .env("FAKE_SYSCTL_LOG", &log)
        .env("RINGCAST_PROC_SYS", &root)
        .env("RINGCAST_SYSCTL_D", &sysctl_d)
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for (key, wanted) in &keys {
        let now = read_sysctl(&root, key);
        match key.as_str() {
            "fs.file-max" => assert_eq!(now.as_deref(), Some("9223372036854775807")),
            "net.netfilter.nf_conntrack_max" => assert_eq!(now, None),
            "net.ipv4.tcp_rmem" => assert_eq!(now.as_deref(), Some("4096 16384 33554432")),
            _ => assert_eq!(now.as_deref(), Some(wanted.as_str()), "{key}\n{all}"),
        }
    }
    let calls = fs::read_to_string(&log).unwrap();
    assert_eq!(calls.lines().count(), keys.len() - 2, "{calls}");
    assert!(calls.lines().all(|l| l.starts_with("-q -w ")), "{calls}");
    assert!(sysctl_d.join("90-ringcast.conf").exists());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{} key(s) changed, 0 failed", keys.len() - 2)),
        "{all}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn systemd_unit_matches_the_engine_and_verifies() {
    let unit = fs::read_to_string(tuning_dir().join("ringcast.service")).unwrap();
    let setting = |name: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name}= missing"))
            .to_owned()
    };
    let stop: u64 = setting("TimeoutStopSec").parse().unwrap();
    assert!(
        stop > Config::default().shutdown_timeout,
        "TimeoutStopSec={stop}"
    );
    assert_eq!(setting("KillSignal"), "SIGTERM");
    assert_eq!(setting("LimitMEMLOCK"), "infinity");
    assert_eq!(setting("Restart"), "on-failure");
    assert_eq!(setting("DynamicUser"), "yes");
    let nofile: u64 = setting("LimitNOFILE").parse().unwrap();
    assert!(nofile >= 1_000_000);
    assert_eq!(
        setting("ExecStart"),
        "/usr/local/bin/ringcast serve --config /etc/ringcast/ringcast.toml"
    );

    if !common::require_tool("systemd-analyze", "--version", "systemd") {
        return;
    }
    // verify insists the ExecStart binary exists: point it at the one
    // cargo built for this test.
    let dir = scratch("unit");
    let copy = dir.join("ringcast.service");
    fs::write(
        &copy,
        unit.replace("/usr/local/bin/ringcast", env!("CARGO_BIN_EXE_ringcast")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !stderr.contains("ringcast.service"),
        "systemd-analyze complained:\n{stderr}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn irq_affinity_dry_run_then_apply_on_a_fake_tree() {
    let dir = scratch("irq");
    let (proc_, sys) = (dir.join("proc"), dir.join("sys"));
    let msi = sys.join("class/net/eth9/device/msi_irqs");
    fs::create_dir_all(&msi).unwrap();
    fs::create_dir_all(sys.join("class/net/lo")).unwrap();
    for irq in ["40", "41"] {
        fs::write(msi.join(irq), "msix\n").unwrap();
        let d = proc_.join("irq").join(irq);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("smp_affinity_list"), "0-15\n").unwrap();
    }
    let run = |args: &[&str]| {
        Command::new(tuning_dir().join("irq-affinity.sh"))
            .args(args)
            .env("RINGCAST_PROC", &proc_)
            .env("RINGCAST_SYS", &sys)
            .output()
            .unwrap()
    };
    let affinity = |irq: &str| {
        fs::read_to_string(proc_.join("irq").join(irq).join("smp_affinity_list")).unwrap()
    };

    assert_eq!(run(&[]).status.code(), Some(2), "--irq-cpus is required");
    let out = run(&["--irq-cpus", "0-1"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(all.matches("would set").count(), 2, "{all}");
    assert!(!all.contains("lo "), "{all}");
    assert_eq!(affinity("40"), "0-15\n");

    let out = run(&["--irq-cpus", "0-1", "--iface", "eth9", "--apply"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(affinity("40").trim(), "0-1");
    assert_eq!(affinity("41").trim(), "0-1");
    let _ = fs::remove_dir_all(&dir);
}
