//! `cargo xtask compare-janus`, run briefly (debug builds, one conversation, 3 s per target): it produces its
//! table, and it cleans up on every path: after a run, and after a start that fails once Janus is up (the
//! RelayDesk server refuses its environment), no namespace is left and no process of the run still lives;
//! and a namespace an earlier run left with a process inside (killed with SIGKILL) is emptied first.
//! Needs root and the Debian package `janus` (`cargo xtask test` installs it), and the debug builds of
//! `relaydesk` and `relaydesk-loadtest` (`cargo test --workspace` builds them before running tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound for one run of the task (three targets, each a few seconds, plus starting them in debug builds).
const RUN_BOUND: Duration = Duration::from_secs(300);

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// Runs the task with `args` (and `env`), bounded; returns its output and its process id.
fn compare_janus(args: &[&str], env: &[(&str, &str)]) -> (Output, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("compare-janus")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_BOUND) {
        Ok(out) => (out.unwrap(), pid),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("compare-janus still running after {RUN_BOUND:?}");
        }
    }
}

/// Processes whose command line names the run's config directory (Janus is started with `-F DIR`).
fn processes_of_run(xtask_pid: u32) -> Vec<String> {
    let mark = format!("relaydesk-janus-{xtask_pid}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&mark).then_some(cmd)
        })
        .collect()
}

fn namespace_left() -> bool {
    Path::new("/run/netns/rdjanus").exists()
}

fn assert_clean(xtask_pid: u32, stderr: &str) {
    assert!(!namespace_left(), "the namespace is left behind:\n{stderr}");
    // Killed processes are reaped by their parent's exit; give the kernel a bounded moment to drop them.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_of_run(xtask_pid);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes of the run still live: {left:?}\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn compare_janus_runs_briefly_and_leaves_nothing_behind() {
    let out = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "compare-janus needs root"
    );
    assert!(
        Path::new("/usr/bin/janus").exists(),
        "janus is missing: run `cargo xtask test` (it installs the Debian package janus)"
    );
    for bin in ["relaydesk", "relaydesk-loadtest"] {
        let path = target_dir().join("debug").join(bin);
        assert!(
            path.exists(),
            "{} is missing: cargo build -p relaydesk -p relaydesk-loadtest",
            path.display()
        );
    }
    let out_dir = std::env::temp_dir().join(format!("compare-janus-test-{}", std::process::id()));
    let out_arg = out_dir.to_str().unwrap();
    let brief = [
        "--debug",
        "--no-build",
        "--sizes",
        "1",
        "--duration",
        "3s",
        "--ramp",
        "1",
        "--out",
        out_arg,
    ];

    // What a run killed with SIGKILL leaves: the namespace with a process still inside (a stand-in for Janus).
    if namespace_left() {
        assert!(
            Command::new("ip")
                .args(["netns", "del", "rdjanus"])
                .status()
                .unwrap()
                .success()
        );
    }
    assert!(
        Command::new("ip")
            .args(["netns", "add", "rdjanus"])
            .status()
            .unwrap()
            .success()
    );
    let mut stale = Command::new("ip")
        .args(["netns", "exec", "rdjanus", "sleep", "600"])
        .spawn()
        .unwrap();

    // A start that fails after Janus is up: the RelayDesk server refuses a malformed environment variable.
    let (out, pid) = compare_janus(&brief, &[("RELAYDESK_MEDIA_BIND", "not-an-address")]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("killing process {} left in namespace rdjanus", stale.id())),
        "the earlier run's process is killed before the namespace is made again: {stderr}"
    );
    assert!(!stale.wait().unwrap().success(), "killed");
    assert!(stderr.contains("relaydesk exited at start"), "{stderr}");
    assert!(
        stderr.contains("stopped janus"),
        "Janus was up and is stopped: {stderr}"
    );
    assert_clean(pid, &stderr);

    // A brief run: the table compares the three targets, and nothing is left afterwards.
    let (out, pid) = compare_janus(&brief, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let table = std::fs::read_to_string(out_dir.join("compare.md")).unwrap();
    for target in ["relaydesk", "relaydesk-sfu", "janus"] {
        assert!(
            table.contains(target),
            "{target} missing from the table:\n{table}\n{stderr}"
        );
    }
    assert_clean(pid, &stderr);
    let _ = std::fs::remove_dir_all(&out_dir);
}
