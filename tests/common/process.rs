//! Bounded waits on the programs the integration tests run: a program that hangs fails its test within a
//! bound instead of blocking it for ever. Shared with `loadtest/tests` (by path: it needs only `std`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Upper bound for one run of a command-line program, or for one line from it (a debug build on a busy host
/// hashing passwords or generating a certificate is well within it).
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(120);

/// `child.wait_with_output()` bounded by [`PROCESS_TIMEOUT`]: a child still running then is killed and the test
/// fails.
pub fn output_within(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PROCESS_TIMEOUT) {
        Ok(out) => out.expect("waiting for the child"),
        Err(_) => {
            // The waiting thread still owns the child; end it by its id (it has not been reaped).
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("process {pid} still running after {PROCESS_TIMEOUT:?}");
        }
    }
}

/// `cmd.output()` bounded as [`output_within`] (stdin empty, stdout and stderr captured).
pub fn output_of(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    output_within(child)
}

/// Reads `from` line by line on a thread, so the test can wait for each line with a bound
/// ([`next_line`]); the channel ends with the stream.
pub fn line_reader(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line from a [`line_reader`], or `None` at the end of the stream; fails the test if none comes
/// within [`PROCESS_TIMEOUT`].
pub fn next_line(lines: &mpsc::Receiver<String>) -> Option<String> {
    match lines.recv_timeout(PROCESS_TIMEOUT) {
        Ok(line) => Some(line),
        Err(mpsc::RecvTimeoutError::Disconnected) => None,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("no line within {PROCESS_TIMEOUT:?}"),
    }
}

/// The remaining lines of a [`line_reader`] up to the end of the stream, which must come within
/// [`PROCESS_TIMEOUT`].
pub fn rest_of(lines: &mpsc::Receiver<String>) -> String {
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    let mut rest = String::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                rest.push_str(&line);
                rest.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return rest,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("stream still open after {PROCESS_TIMEOUT:?}: {rest}"),
        }
    }
}

/// `child.wait()` bounded by [`PROCESS_TIMEOUT`] (polled): a child still running then is killed and the test
/// fails.
pub fn wait_within(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("polling the child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} still running after {PROCESS_TIMEOUT:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
