//! Bad arguments give one clear line on stderr and exit code 2 (no engine needed).
mod common;

fn assert_refused(args: &[&str], needle: &str) {
    let out = common::loadgen(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?} printed more than one line: {err}"
    );
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    assert_refused(&["fanout", "--rate", "0"], "--rate");
    assert_refused(&["fanout", "--connections", "zero"], "zero");
    assert_refused(&["nonsense"], "nonsense");
    assert_refused(&["fanout", "--server", "not-an-address"], "--server");
    assert_refused(&["fanout", "-c", "2", "--processes", "4"], "--processes");
    assert_refused(&["chat", "--duration", "-3"], "--duration");
    assert_refused(&["fanout", "--src-ips", "999"], "999");
}

#[test]
fn fd_limit_is_checked_up_front_and_names_the_fix() {
    // The loadgen raises its soft limit to the hard one; soft and hard
    // limits of 4096 set here (lowering them needs no privilege) make the
    // check the same on every host. 5,000 connections then need two
    // processes.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 4096 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_ringcast-loadgen"))
        .args(["fanout", "-c", "5000", "-s", "127.0.0.1:9"])
        .output()
        .expect("running ringcast-loadgen under ulimit -n 4096");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("5000 connections per process need")
            && err.contains("the limit is 4096: use --processes 2"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn help_exits_zero() {
    let out = common::loadgen(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for s in [
        "fanout",
        "saturate",
        "connect",
        "idle",
        "chat",
        "churn",
        "--server-pid",
        "--src-ips",
    ] {
        assert!(text.contains(s), "help lacks {s}");
    }
}
