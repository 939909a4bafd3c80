//! The cluster's node registry on a real Redis (`RELAYDESK_TEST_REDIS`; `cargo xtask test` starts one where
//! missing): nodes register with their load, a node whose id is taken does not start, a node killed with
//! SIGKILL leaves the registry when its record expires, a node that stops leaves at once, and
//! `relaydesk cluster status` shows it all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use relaydesk_signalling::live::LiveParts;
use serde_json::Value;

use common::redis::PrivateRedis;
use common::{ServerProcess, process};
use live_common::Live;

/// Heartbeat and time to live of the registry in this test (milliseconds).
const HEARTBEAT_MS: u64 = 100;
const TTL_MS: u64 = 1_000;
/// Bound of every wait on the registry.
const WAIT: Duration = Duration::from_secs(30);

fn redis_url() -> String {
    std::env::var("RELAYDESK_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `relaydesk --config CONFIG --cluster URL cluster status [--json]`.
fn status(config: &Path, json: bool) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_relaydesk"));
    cmd.arg("--config")
        .arg(config)
        .args(["--cluster", &redis_url(), "cluster", "status"]);
    if json {
        cmd.arg("--json");
    }
    process::output_of(&mut cmd)
}

fn nodes(config: &Path) -> Vec<Value> {
    let out = status(config, true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().clone()
}

/// Waits (bounded) until `pred` holds for the registry's nodes; returns them and how long it took.
fn until(config: &Path, what: &str, pred: impl Fn(&[Value]) -> bool) -> (Vec<Value>, Duration) {
    let start = Instant::now();
    loop {
        let n = nodes(config);
        if pred(&n) {
            return (n, start.elapsed());
        }
        assert!(start.elapsed() < WAIT, "{what}: not within {WAIT:?}; registry: {n:?}");
        std::thread::sleep(Duration::from_millis(HEARTBEAT_MS));
    }
}

fn ids(nodes: &[Value]) -> Vec<&str> {
    nodes.iter().filter_map(|n| n["id"].as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_with_their_load_and_leave_when_stopped_or_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = format!("relaydesk-test-{}", std::process::id());
    let config = tmp.path().join("relaydesk.toml");
    std::fs::write(
        &config,
        format!("[cluster]\nkey_prefix = \"{prefix}\"\nheartbeat_ms = {HEARTBEAT_MS}\nttl_ms = {TTL_MS}\n"),
    )
    .unwrap();

    // Node a: in this process, with a visitor waiting in the queue (no agent is online).
    let mut a = Live::start(
        |c| {
            c.cluster.redis_url = Some(redis_url());
            c.cluster.node_id = Some("a".into());
            c.cluster.key_prefix = prefix.clone();
            c.cluster.heartbeat_ms = HEARTBEAT_MS;
            c.cluster.ttl_ms = TTL_MS;
        },
        LiveParts::default(),
    )
    .await;
    let (_visitor, _) = a.visitor().await;
    let a_addr = a.running().local_addr().to_string();
    let cfg = config.clone();
    let (n, _) = tokio::task::spawn_blocking(move || {
        until(&cfg, "node a with one queued conversation", |n| {
            n.len() == 1 && n[0]["queued"] == 1
        })
    })
    .await
    .unwrap();
    assert_eq!(n[0]["id"], "a");
    assert_eq!(n[0]["listen"], a_addr.as_str());
    assert_eq!(n[0]["conversations"], 1, "a queued conversation is open");

    // Node b: the real binary. A second b is refused while the first one lives.
    let cfg = config.clone();
    let data_b = tmp.path().join("b");
    let data_b2 = tmp.path().join("b2");
    let cluster = redis_url();
    let (b_pid, refused, table, killed_after) = tokio::task::spawn_blocking(move || {
        let args: [&OsStr; 4] = [
            "--node-id".as_ref(),
            "b".as_ref(),
            "--cluster".as_ref(),
            cluster.as_ref(),
        ];
        let b = ServerProcess::serve(&data_b, &cfg, &args);
        until(&cfg, "nodes a and b", |n| ids(n) == ["a", "b"]);
        let refused = process::output_of(
            std::process::Command::new(env!("CARGO_BIN_EXE_relaydesk"))
                .arg("--data-dir")
                .arg(&data_b2)
                .arg("--config")
                .arg(&cfg)
                .args(["serve", "--listen", "127.0.0.1:0"])
                .args(args),
        );
        let table = String::from_utf8_lossy(&status(&cfg, false).stdout).into_owned();
        // kill -9: the record stays until its time to live runs out, then goes.
        let pid = b.pid();
        let killed = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        until(&cfg, "b gone after SIGKILL", |n| ids(n) == ["a"]);
        drop(b);
        (pid, refused, table, killed.elapsed())
    })
    .await
    .unwrap();
    assert!(!refused.status.success(), "a second node b started");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("node id \"b\" is held by a running node"), "{err}");
    assert!(b_pid > 0);
    assert!(table.starts_with("NODE"), "{table}");
    assert!(
        table.contains("2 node(s), 1 open conversation(s), 1 of them queued"),
        "{table}"
    );
    eprintln!("node b left the registry {killed_after:?} after SIGKILL (ttl {TTL_MS} ms)");

    // An orderly stop leaves at once: the record is gone when the shutdown returns.
    a.server.take().unwrap().shutdown().await.unwrap();
    let cfg = config.clone();
    let left = tokio::task::spawn_blocking(move || nodes(&cfg)).await.unwrap();
    assert!(left.is_empty(), "{left:?}");

    // Without a cluster the command says what to give.
    let out = process::output_of(
        std::process::Command::new(env!("CARGO_BIN_EXE_relaydesk"))
            .env_remove("RELAYDESK_CLUSTER_URL")
            .args(["cluster", "status"]),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_comes_back_into_the_registry_after_redis_restarts_empty() {
    let port = common::redis::free_port();
    let redis = PrivateRedis::start(port);
    let url = redis.url();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("relaydesk.toml");
    std::fs::write(
        &config,
        format!("[cluster]\nredis_url = \"{url}\"\nheartbeat_ms = {HEARTBEAT_MS}\nttl_ms = {TTL_MS}\n"),
    )
    .unwrap();
    let list = |config: std::path::PathBuf| {
        let out = process::output_of(
            std::process::Command::new(env!("CARGO_BIN_EXE_relaydesk"))
                .arg("--config")
                .arg(config)
                .args(["cluster", "status", "--json"]),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let node = Live::start(
        |c| {
            c.cluster.redis_url = Some(url.clone());
            c.cluster.node_id = Some("r".into());
            c.cluster.heartbeat_ms = HEARTBEAT_MS;
            c.cluster.ttl_ms = TTL_MS;
        },
        LiveParts::default(),
    )
    .await;
    let cfg = config.clone();
    let listed = tokio::task::spawn_blocking(move || list(cfg)).await.unwrap();
    assert_eq!(listed[0]["id"], "r");

    // Redis goes away: heartbeats fail and are counted, the node keeps serving.
    drop(redis);
    let client = node.client();
    let start = Instant::now();
    loop {
        let m = client.get("/metrics").await;
        assert_eq!(m.status, 200);
        // (The metrics are the process's: the other test's node shares them, and its heartbeats do not fail.)
        if common::metric(&m.text(), "relaydesk_cluster_heartbeat_failures_total") >= 2.0 {
            break;
        }
        assert!(start.elapsed() < WAIT, "no failed heartbeat counted: {}", m.text());
        tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS)).await;
    }
    assert_eq!(client.get("/healthz").await.status, 200);

    // It comes back empty (nothing was saved): the node writes its record again by itself.
    let _redis = PrivateRedis::start(port);
    let cfg = config.clone();
    let back = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            let listed = list(cfg.clone());
            if listed.as_array().is_some_and(|a| a.len() == 1) {
                return (listed, start.elapsed());
            }
            assert!(start.elapsed() < WAIT, "the node did not come back: {listed}");
            std::thread::sleep(Duration::from_millis(HEARTBEAT_MS));
        }
    })
    .await
    .unwrap();
    assert_eq!(back.0[0]["id"], "r");
    eprintln!("node back in the registry {:?} after Redis restarted", back.1);
}
