//! The load tester against the real `relaydesk` binary (HTTPS with its self-signed certificate, the SFU on
//! loopback UDP): a few conversations for a few seconds through the whole flow — setup through the admin
//! API, visitor session token, visitor and agent sockets, queue, assignment, call offer/answer, audio and
//! video both ways, chat with card numbers, a file per conversation — then the report: everything set up,
//! media received, zero masking violations, every file intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::ServerProcess;
use relaydesk_loadtest::cli::Cli;
use relaydesk_loadtest::http::{BaseUrl, Client, tls_config};
use relaydesk_loadtest::media::MediaConfig;
use relaydesk_loadtest::report::Thresholds;
use relaydesk_loadtest::run::{Plan, run};
use relaydesk_loadtest::target::relaydesk::{RelayDeskOptions, RelayDeskTarget};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_through_the_whole_relaydesk_flow() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("admin.pw");
    std::fs::write(&pw, "a-load-test-admin-password\n").unwrap();
    let config = dir.path().join("config.toml");
    // One address opens every visitor session here: lift the per-address limit for the test.
    std::fs::write(&config, "[live]\nsessions_per_minute_per_address = 10000\n").unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::serve(&data, &config, &["--admin-password-file".as_ref(), pw.as_os_str()]);
    let url = server.url.clone();

    let cli = Cli::try_parse_from([
        "relaydesk-loadtest",
        "--url",
        &url,
        "--insecure",
        "--setup",
        "--admin-password-file",
        pw.to_str().unwrap(),
        "--conversations",
        "3",
        "--ramp",
        "10",
        "--duration",
        "3s",
        "--audio",
        "--video",
        "--video-kbps",
        "300",
        "--chat-rate",
        "4",
        "--card-fraction",
        "0.5",
        "--file-size",
        "200000",
        "--quiet",
        "--shards",
        "1",
    ])
    .unwrap();
    cli.run.validate().unwrap();
    let tls = tls_config(None, true).unwrap();
    let client = Client::new(
        BaseUrl::parse(&url).unwrap(),
        Some(tls.clone()),
        Duration::from_secs(20),
    );
    let opts = RelayDeskOptions::from_args(&cli.run).unwrap();
    let target = Arc::new(RelayDeskTarget::new(client, tls, IpAddr::V4(Ipv4Addr::LOCALHOST), opts));
    let plan = Plan {
        conversations: 3,
        ramp: 10.0,
        duration: Duration::from_secs(3),
        media: MediaConfig {
            audio: true,
            video: true,
            video_kbps: 300,
            ..MediaConfig::default()
        },
        shards: 1,
        server_pid: Some(server.pid()),
        progress: false,
        lifetime: None,
        sample_every: None,
        warmup: Duration::ZERO,
    };
    let mut report = run(target, plan).await.unwrap();
    let ok = report.check(&Thresholds {
        max_loss: None,
        max_p99_ms: None,
        min_success: Some(100.0),
    });
    let table = report.table();
    assert!(report.complete, "{table}");
    assert_eq!(report.established, 3, "{table}");
    assert!(ok, "{table}");
    for stage in ["token", "socket", "welcome", "queued", "assigned", "call"] {
        assert_eq!(
            report.stages.get(stage).map(|p| p.count),
            Some(3),
            "stage {stage}: {table}"
        );
    }
    assert_eq!(report.media.connected, 6, "{table}");
    assert_eq!(report.media.receiving, 6, "every peer received media: {table}");
    assert!(report.media.packets_received > 100, "{table}");
    assert!(report.chat_sent >= 6 && report.chat_received > 0, "{table}");
    assert_eq!(report.masking_violations, 0, "{table}");
    // One 200 kB file per conversation, visitor to agent over the call's file channel, SHA-256 checked.
    assert_eq!((report.files_ok, report.file_failures), (3, 0), "{table}");
    assert!(report.server.cpu_seconds.is_some(), "{table}");
    let json = dir.path().join("report.json");
    report.write_json(&json).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["masking_violations"], 0);
    assert_eq!(v["target"], "relaydesk");
}

/// The soak mode, short: conversations with audio, video, chat and a file each, ended and replaced every
/// 20 s, for two and a half minutes against the real binary; the server's memory, descriptors and threads
/// and the p99 latencies sampled every 10 s must stay flat by the same bounds as the 30-minute soak
/// (`relaydesk_loadtest::soak::Bound`). A server that keeps anything per ended conversation (a socket, a
/// task, a room, a buffer) rises through the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_with_churn_stays_flat() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("admin.pw");
    std::fs::write(&pw, "a-load-test-admin-password\n").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[live]\nsessions_per_minute_per_address = 10000\n").unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::serve(&data, &config, &["--admin-password-file".as_ref(), pw.as_os_str()]);
    let url = server.url.clone();
    let args = [
        "relaydesk-loadtest",
        "--url",
        &url,
        "--insecure",
        "--setup",
        "--admin-password-file",
        pw.to_str().unwrap(),
        "--conversations",
        "4",
        "--audio",
        "--video",
        "--video-kbps",
        "200",
        "--chat-rate",
        "1",
        "--file-size",
        "100000",
        "--churn",
        "20s",
        "--soak",
        "--sample-every",
        "10s",
        "--duration",
        "150s",
        "--quiet",
    ];
    let cli = Cli::try_parse_from(args).unwrap();
    cli.run.validate().unwrap();
    let tls = tls_config(None, true).unwrap();
    let client = Client::new(
        BaseUrl::parse(&url).unwrap(),
        Some(tls.clone()),
        Duration::from_secs(20),
    );
    let opts = RelayDeskOptions::from_args(&cli.run).unwrap();
    let target = Arc::new(RelayDeskTarget::new(client, tls, IpAddr::V4(Ipv4Addr::LOCALHOST), opts));
    let plan = Plan {
        conversations: 4,
        ramp: 10.0,
        duration: cli.run.duration,
        media: MediaConfig {
            audio: true,
            video: true,
            video_kbps: 200,
            ..MediaConfig::default()
        },
        shards: 1,
        server_pid: Some(server.pid()),
        progress: false,
        lifetime: cli.run.churn,
        sample_every: Some(cli.run.sample_every),
        warmup: cli.run.warmup(),
    };
    let mut report = run(target, plan).await.unwrap();
    let ok = report.check(&Thresholds::default());
    let table = report.table();
    let soak = report.soak.clone().expect("soak figures");
    println!("{table}\n{}", soak.table());
    assert!(report.complete, "{table}");
    // The conversations turned over (4 places, a new conversation every 20 s in each) and carried files.
    assert!(report.attempts >= 4 * 6, "{table}");
    assert!(report.established >= 4 * 5, "{table}");
    assert!(report.files_ok >= 4 * 4, "{table}");
    assert_eq!(report.masking_violations, 0, "{table}");
    // Every metric was fitted over the samples after the warm-up, and none grew.
    // One sample every 10 s of the 150 s hold (the last may fall after the end).
    assert!((14..=15).contains(&soak.samples.len()), "{}", soak.csv());
    for m in relaydesk_loadtest::soak::METRICS {
        let fit = soak.slopes.iter().find(|f| f.metric == m);
        assert!(fit.is_some_and(|f| f.samples >= 11), "{m:?} not fitted: {}", soak.csv());
    }
    assert!(soak.flat, "{}\n{}", soak.table(), soak.csv());
    assert!(ok, "{table}");
    let svg = soak.svg("short soak");
    assert_eq!(svg.matches("<polyline").count(), 5, "one line per metric");
}
