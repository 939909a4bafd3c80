//! The server's memory under a flood of logins: 600 at once against the real `relaydesk` binary, its
//! peak resident memory (`VmHWM` in `/proc/PID/status`) read afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::{Client, ServerProcess, connected, send_login_within};

/// A field of `/proc/PID/status` in MiB (`VmHWM`, `VmRSS`).
fn status_mib(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

/// 600 concurrent logins of unknown users (each costs one argon2id verification of 19 MiB when it is
/// let through) from one address whose limit is lifted, so only the hashing pool stands between them
/// and the server's memory.
///
/// The bound: the server without its hashing memory is about 40 MiB (test build); the pool adds its
/// threads × 19 MiB (at most 4 threads by default: 76 MiB); 600 TLS connections with their buffers add
/// about 30 MiB: 146 MiB at most. The code before the pool peaked at 1.2 GiB here on 2 cores (a 19 MiB
/// block kept in each of glibc's per-thread arenas, one per blocking thread that hashed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_concurrent_logins_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[login_throttle]\naddress_max_failures = 100000\n").unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::serve(&data, &config, &[]);
    let (pid, url) = (server.pid(), server.url.clone());
    let addr: SocketAddr = url.trim_start_matches("https://").parse().unwrap();
    let client = Client::new(addr, &data.join("tls/cert.pem"));
    let at_rest = status_mib(pid, "VmRSS:");

    // All 600 connections are open before the first login is sent.
    let mut ready = Vec::new();
    for _ in 0..600 {
        ready.push(connected(&client).await);
    }
    let mut tasks = Vec::new();
    for (i, sender) in ready.into_iter().enumerate() {
        let host = addr.to_string();
        tasks.push(tokio::spawn(async move {
            // Longer than the server's own request timeout (30 s): every login gets an answer.
            let wait = std::time::Duration::from_secs(60);
            send_login_within(sender, host, &format!("nobody{i}"), "not the password", wait)
                .await
                .0
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let peak = status_mib(pid, "VmHWM:");
    let failed = statuses.iter().filter(|&&s| s == Some(401)).count();
    let busy = statuses.iter().filter(|&&s| s == Some(503)).count();
    eprintln!("at rest {at_rest:.1} MiB, peak {peak:.1} MiB; {failed} verified, {busy} busy");
    assert!(
        peak < 160.0,
        "peak resident memory {peak:.1} MiB (at rest {at_rest:.1} MiB)"
    );
    // Every login was answered, quickly: a login that found no room is told so at once.
    assert_eq!(failed + busy, 600, "{statuses:?}");
    assert!(failed > 0);
}
