//! The registry's configuration, and the registry on a real Redis (`RELAYDESK_TEST_REDIS`, which
//! `cargo xtask test` starts where missing; default redis://127.0.0.1:6379), each test under a key prefix of
//! its own.
#![allow(clippy::unwrap_used)]

use super::*;

fn redis_url() -> String {
    std::env::var("RELAYDESK_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn config(ttl_ms: u64) -> ClusterConfig {
    ClusterConfig {
        redis_url: Some(redis_url()),
        node_id: None,
        key_prefix: format!("relaydesk-test-{}", crate::token::new_password().unwrap()),
        heartbeat_ms: 100,
        ttl_ms,
        advertise: None,
    }
}

fn record(id: &str) -> NodeRecord {
    NodeRecord::new(id.into(), "127.0.0.1:8443".into(), None, Some("127.0.0.1".into()))
}

async fn list(c: &ClusterConfig) -> Vec<NodeRecord> {
    let c = c.clone();
    tokio::task::spawn_blocking(move || list_blocking(&c))
        .await
        .unwrap()
        .unwrap()
        .0
}

#[test]
fn hostile_sections_are_refused_with_the_key_named() {
    let ok = ClusterConfig {
        redis_url: Some("redis://:secret@10.0.0.5:6379/2".into()),
        ..ClusterConfig::default()
    };
    assert_eq!(ok.validate(), Ok(()));
    let cases: [(ClusterConfig, &str); 7] = [
        (
            ClusterConfig {
                redis_url: Some("rediss://10.0.0.5".into()),
                ..ClusterConfig::default()
            },
            "rediss",
        ),
        (
            ClusterConfig {
                redis_url: Some("http://:secret@10.0.0.5".into()),
                ..ClusterConfig::default()
            },
            "cluster.redis_url",
        ),
        (
            ClusterConfig {
                node_id: Some("a b".into()),
                ..ClusterConfig::default()
            },
            "cluster.node_id",
        ),
        (
            ClusterConfig {
                node_id: Some("n".repeat(65)),
                ..ClusterConfig::default()
            },
            "cluster.node_id",
        ),
        (
            ClusterConfig {
                key_prefix: "a:*".into(),
                ..ClusterConfig::default()
            },
            "cluster.key_prefix",
        ),
        (
            ClusterConfig {
                heartbeat_ms: 10,
                ..ClusterConfig::default()
            },
            "cluster.heartbeat_ms",
        ),
        (
            ClusterConfig {
                heartbeat_ms: 1_000,
                ttl_ms: 1_500,
                ..ClusterConfig::default()
            },
            "cluster.ttl_ms",
        ),
    ];
    for (c, key) in cases {
        let e = c.validate().unwrap_err();
        assert!(e.contains(key), "{e} should name {key}");
        assert!(!e.contains("secret"), "a password in an error: {e}");
    }
}

#[test]
fn the_password_never_shows() {
    let c = ClusterConfig {
        redis_url: Some("redis://user:secret@10.0.0.5:6379".into()),
        ..ClusterConfig::default()
    };
    assert!(!format!("{c:?}").contains("secret"));
    assert!(!serde_json::to_string(&c).unwrap().contains("secret"));
}

#[test]
fn the_node_id_defaults_to_a_valid_host_name() {
    let id = ClusterConfig::default().resolved_node_id();
    assert!(valid_name(&id), "{id:?}");
    let named = ClusterConfig {
        node_id: Some("desk-1".into()),
        ..ClusterConfig::default()
    };
    assert_eq!(named.resolved_node_id(), "desk-1");
}

#[tokio::test]
async fn a_node_registers_beats_and_leaves_and_its_id_is_its_own() {
    let c = config(2_000);
    let a = Registration::claim(&c, record("a")).await.unwrap();
    // A second process with the same id is refused while the first one's record is renewed (it waits one
    // time to live for the record to expire first, as after a crash).
    let beating = ShutdownHandle::new();
    let a_beats = tokio::spawn(a.beat_until(Load::default, beating.clone()));
    let waited = std::time::Instant::now();
    match Registration::claim(&c, record("a")).await {
        Err(ClusterError::IdInUse { id, .. }) => assert_eq!(id, "a"),
        other => panic!("expected IdInUse, got {other:?}"),
    }
    assert!(
        waited.elapsed() >= Duration::from_millis(2_000),
        "{:?}",
        waited.elapsed()
    );
    beating.shutdown();
    let mut a = a_beats.await.unwrap();
    let _b = Registration::claim(&c, record("b")).await.unwrap();
    a.beat(Load {
        conversations: 3,
        queued: 2,
    })
    .await
    .unwrap();
    let nodes = list(&c).await;
    assert_eq!(nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!((nodes[0].conversations, nodes[0].queued), (3, 2));
    assert_eq!(nodes[0].media_address.as_deref(), Some("127.0.0.1"));
    // Another registry prefix sees none of them.
    assert!(list(&config(5_000)).await.is_empty());
    a.deregister().await.unwrap();
    let nodes = list(&c).await;
    assert_eq!(nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["b"]);
}

#[tokio::test]
async fn a_record_taken_over_after_expiry_is_not_overwritten_by_the_old_process() {
    let c = config(300);
    let mut old = Registration::claim(&c, record("a")).await.unwrap();
    // Without heartbeats the record expires: a new process may then take the id (bounded wait).
    let mut new = None;
    for _ in 0..100 {
        match Registration::claim(&c, record("a")).await {
            Ok(r) => {
                new = Some(r);
                break;
            }
            Err(ClusterError::IdInUse { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let new = new.expect("the record never expired");
    assert!(matches!(
        old.beat(Load::default()).await,
        Err(ClusterError::IdInUse { .. })
    ));
    old.deregister().await.unwrap();
    let nodes = list(&c).await;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].instance, new.record().instance);
}

#[tokio::test]
async fn the_heartbeat_task_keeps_the_record_alive_and_removes_it_on_shutdown() {
    let c = config(300);
    let reg = Registration::claim(&c, record("a")).await.unwrap();
    let shutdown = ShutdownHandle::new();
    let task = tokio::spawn(reg.run(
        || Load {
            conversations: 7,
            queued: 0,
        },
        shutdown.clone(),
    ));
    // Past several TTLs the record is still there, carrying the load (bounded wait for the first beat).
    let mut seen = 0;
    for _ in 0..200 {
        let nodes = list(&c).await;
        assert_eq!(nodes.len(), 1, "the record expired while the heartbeat ran");
        if nodes[0].conversations == 7 {
            seen += 1;
            if seen == 10 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 10);
    shutdown.shutdown();
    task.await.unwrap();
    assert!(list(&c).await.is_empty());
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error_not_a_hang() {
    let c = ClusterConfig {
        redis_url: Some("redis://:secret@127.0.0.1:1".into()),
        ..ClusterConfig::default()
    };
    let e = Registration::claim(&c, record("a")).await.unwrap_err();
    assert!(matches!(e, ClusterError::Redis(_)), "{e:?}");
    assert!(!e.to_string().contains("secret"));
    let e = tokio::task::spawn_blocking(move || list_blocking(&c))
        .await
        .unwrap()
        .unwrap_err();
    assert!(!e.to_string().contains("secret"));
}

#[tokio::test]
async fn junk_under_the_registry_prefix_is_skipped_and_counted() {
    let c = config(5_000);
    let _a = Registration::claim(&c, record("a")).await.unwrap();
    let mut conn = redis::Client::open(redis_url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (id, junk) in [("x", "not json"), ("y", "{\"id\":1}"), ("z", "")] {
        let _: () = redis::cmd("SET")
            .arg(format!("{}:node:{id}", c.key_prefix))
            .arg(junk)
            .arg("PX")
            .arg(5_000)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let c2 = c.clone();
    let (nodes, unreadable) = tokio::task::spawn_blocking(move || list_blocking(&c2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(unreadable, 3);
}
