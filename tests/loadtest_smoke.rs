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
