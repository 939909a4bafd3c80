//! Smoke runs of the real `relaydesk-loadtest` binary: against the RelayDesk SFU served by `serve-sfu`
//! (real UDP on loopback, real str0m on both sides), a missed threshold, and an unreachable server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};

#[path = "../../tests/common/process.rs"]
mod process;

use process::{line_reader, next_line, output_of, rest_of, wait_within};

const BIN: &str = env!("CARGO_BIN_EXE_relaydesk-loadtest");

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve-sfu` on a free port and waits for its "listening on URL" line.
fn serve_sfu() -> Server {
    let mut child = Command::new(BIN)
        .args(["serve-sfu", "--listen", "127.0.0.1:0", "--shards", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut server = Server(child, String::new());
    let line = next_line(&line_reader(stdout)).unwrap_or_default();
    server.1 = line
        .trim()
        .strip_prefix("listening on ")
        .expect("the first line names the URL")
        .to_string();
    server
}

fn load(url: &str, extra: &[&str], json: &std::path::Path) -> std::process::Output {
    output_of(
        Command::new(BIN)
            .args([
                "--target",
                "relaydesk-sfu",
                "--url",
                url,
                "--audio",
                "--video",
                "--video-kbps",
                "300",
            ])
            .args([
                "--conversations",
                "3",
                "--ramp",
                "20",
                "--duration",
                "3s",
                "--quiet",
                "--shards",
                "1",
            ])
            .arg("--json")
            .arg(json)
            .args(extra),
    )
}

#[test]
fn media_through_the_relaydesk_sfu_with_a_report() {
    let server = serve_sfu();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let chart = dir.path().join("chart.html");
    let out = load(
        &server.1,
        &[
            "--chart",
            chart.to_str().unwrap(),
            "--max-loss",
            "5",
            "--min-success",
            "100",
            "--server-pid",
            &server.0.id().to_string(),
        ],
        &json,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("media latency"), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["complete"], true);
    assert_eq!(r["established"], 3);
    assert_eq!(r["media"]["connected"], 6, "{r}");
    assert_eq!(r["media"]["receiving"], 6, "every peer received media: {r}");
    assert!(r["media"]["packets_received"].as_u64().unwrap() > 100, "{r}");
    assert!(r["media"]["latency"]["count"].as_u64().unwrap() > 100);
    assert!(r["media"]["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(r["masking_violations"], 0);
    assert!(
        r["server"]["cpu_seconds"].as_f64().is_some(),
        "server CPU from /proc: {r}"
    );
    assert!(!r["timeline"].as_array().unwrap().is_empty());
    assert!(std::fs::read_to_string(&chart).unwrap().contains("<svg"));
}

#[test]
fn a_missed_threshold_exits_1_with_the_report_written() {
    let server = serve_sfu();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    // No real run can have a p99 latency of at most 1 ns.
    let out = load(&server.1, &["--max-p99-ms", "0.000001"], &json);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let t = r["thresholds"].as_array().unwrap();
    assert!(t.iter().any(|t| t["name"] == "max-p99-ms" && t["ok"] == false), "{r}");
}

#[test]
fn an_unreachable_server_is_a_clear_error_exit_3_and_a_partial_report() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = load(&format!("http://127.0.0.1:{port}"), &[], &json);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unreachable") && err.contains(&port.to_string()), "{err}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["complete"], false);
    assert!(r["aborted"].as_str().unwrap().contains("unreachable"));
}

#[test]
fn bad_command_lines_exit_2() {
    let out = output_of(Command::new(BIN).args(["--target", "janus", "--audio"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--janus-url"));
    let out = output_of(Command::new(BIN).args(["--conversations", "many"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_server_dying_mid_run_ends_the_run_with_exit_3_and_a_partial_report() {
    let mut server = serve_sfu();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut child = Command::new(BIN)
        .args([
            "--target",
            "relaydesk-sfu",
            "--url",
            &server.1,
            "--audio",
            "--conversations",
            "2",
            "--ramp",
            "20",
        ])
        .args([
            "--duration",
            "60s",
            "--quiet",
            "--shards",
            "1",
            "--server-pid",
            &server.0.id().to_string(),
        ])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = line_reader(child.stderr.take().unwrap());
    let line = next_line(&stderr).unwrap_or_default();
    assert!(line.contains("ready; starting"), "{line}");
    server.0.kill().unwrap();
    wait_within(&mut server.0);
    let rest = rest_of(&stderr);
    let status = wait_within(&mut child);
    assert_eq!(status.code(), Some(3), "{rest}");
    assert!(rest.contains("run aborted"), "{rest}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["complete"], false);
    assert!(r["aborted"].as_str().unwrap().contains("server"), "{r}");
}
