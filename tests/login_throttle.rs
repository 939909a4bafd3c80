//! Login throttling against a real server (real TLS, real SQLite, real concurrency): attempts are counted
//! before the password is verified, an attacker's address does not lock the owner out, and throttled
//! attempts are audited in aggregate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestServer, connected, send_login};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn audit(t: &TestServer, action: &'static str) -> Vec<relaydesk_signalling::store::AuditRecord> {
    let all = t
        .running()
        .state()
        .store
        .call(|db| db.recent_audit(1000))
        .await
        .unwrap();
    all.into_iter().filter(|a| a.action == action).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_passwords_are_verified_at_most_the_limit() {
    let mut t = TestServer::start().await;
    let c = t.client();
    let host = t.addr().to_string();
    // Every connection is ready before the first login is sent, so all 60 arrive together.
    let mut ready = Vec::new();
    for _ in 0..61 {
        ready.push(connected(&c).await);
    }
    let right = ready.pop().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for sender in ready {
        let (tx, host) = (tx.clone(), host.clone());
        tokio::spawn(async move {
            let _ = tx.send(send_login(sender, host, "admin", "wrong password").await);
        });
    }
    drop(tx);
    // The right password is sent once the burst has been refused at least once (or after the burst).
    let mut answers = Vec::new();
    let mut right_answer = None;
    let mut right = Some(right);
    while let Some(a) = rx.recv().await {
        answers.push(a);
        if a.0 == 429
            && let Some(sender) = right.take()
        {
            right_answer = Some(send_login(sender, host.clone(), "admin", &t.admin_password).await);
        }
    }
    if let Some(sender) = right.take() {
        right_answer = Some(send_login(sender, host.clone(), "admin", &t.admin_password).await);
    }
    assert_eq!(answers.len(), 60);
    let verified = answers.iter().filter(|a| a.0 == 401).count();
    let refused = answers.iter().filter(|a| a.0 == 429).count();
    assert_eq!(verified + refused, 60, "{answers:?}");
    assert!(verified <= 5, "{verified} wrong passwords were verified: {answers:?}");
    assert!(
        answers
            .iter()
            .filter(|a| a.0 == 429)
            .all(|a| a.1.is_some_and(|s| (1..=60).contains(&s)))
    );
    // Each verified failure is audited; no more than the limit were computed.
    assert_eq!(audit(&t, "login.failure").await.len(), verified);
    // The right password inside a burst past the limit is refused too.
    let (status, retry) = right_answer.unwrap();
    assert_eq!(status, 429);
    assert!(retry.is_some_and(|s| s >= 1));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attackers_addresses_slow_the_owner_but_never_lock_them_out() {
    let mut t = TestServer::start().await;
    // Four attacker addresses, five wrong passwords each: each address is locked out of the account,
    // and the account has 20 failures, the default point where its logins start to be delayed.
    for last in 2..=5 {
        let attacker = t.client().connecting_from(ip(last));
        for i in 0..5 {
            assert_eq!(
                attacker.login("admin", "wrong password").await.status,
                401,
                "{last}: {i}"
            );
        }
        let r = attacker.login("admin", &t.admin_password).await;
        assert_eq!(
            r.status, 429,
            "the attacker's address is locked, even for the right password"
        );
        assert!(r.header("retry-after").is_some());
    }
    // The owner, at 127.0.0.1, is let in, after the account's delay (500 ms: a server-side wait, so
    // this lower bound cannot be undercut however fast the machine is).
    let owner = t.client().connecting_from(ip(1));
    let started = Instant::now();
    let r = owner.login("admin", &t.admin_password).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // The owner's success ended the slow-down; the attacker's addresses stay locked.
    let attacker = t.client().connecting_from(ip(2));
    assert_eq!(attacker.login("admin", "wrong password").await.status, 429);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_attempts_are_audited_once_per_lockout() {
    let mut t = TestServer::start().await;
    let c = t.client().connecting_from(ip(7));
    for _ in 0..5 {
        assert_eq!(c.login("Victim", "wrong password").await.status, 401);
    }
    for _ in 0..30 {
        assert_eq!(c.login("victim", "wrong password").await.status, 429);
    }
    let state = Arc::clone(t.running().state());
    // The lockout still runs: its record is written when it ends, or, as here, at shutdown.
    t.stop().await;
    let all = state.store.call(|db| db.recent_audit(1000)).await.unwrap();
    let throttled: Vec<_> = all.iter().filter(|a| a.action == "login.throttled").collect();
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    assert_eq!(throttled[0].target.as_deref(), Some("victim"));
    assert_eq!(throttled[0].client_addr.as_deref(), Some("127.0.0.7"));
    assert_eq!(throttled[0].detail.as_deref(), Some("30 attempts refused"));
    assert_eq!(all.iter().filter(|a| a.action == "login.failure").count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hashing_queue_answers_503_at_once() {
    let mut t = TestServer::start_with(|c| {
        c.login_throttle.hash_threads = 1;
        c.login_throttle.hash_queue = 1;
        c.login_throttle.address_max_failures = 1000;
    })
    .await;
    let c = t.client();
    let host = t.addr().to_string();
    let mut ready = Vec::new();
    for _ in 0..20 {
        ready.push(connected(&c).await);
    }
    let mut tasks = Vec::new();
    for (i, sender) in ready.into_iter().enumerate() {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            send_login(sender, host, &format!("nobody{i}"), "wrong password").await
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let busy: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert_eq!(
        answers.iter().filter(|a| a.0 == 401).count() + busy.len(),
        20,
        "{answers:?}"
    );
    assert!(
        !busy.is_empty(),
        "one thread and one queue slot cannot take 20 at once: {answers:?}"
    );
    assert!(busy.iter().all(|a| a.1 == Some(1)));
    // Only the logins that found room were verified.
    let verified = t.running().state().hash_pool.verifications();
    assert_eq!(verified as usize, answers.len() - busy.len());
    t.stop().await;
}
