//! The cluster on real engines (docs/deploy.md, "Several nodes"): three `relaydesk` nodes on loopback
//! (different ports) share one PostgreSQL (a schema of the test's own, `RELAYDESK_TEST_POSTGRES`) and one
//! Redis (a `redis-server` of the test's own, so it can be restarted) and one data directory (the
//! certificate, the master key, shared files).
//!
//! One node holds the leader lease and serves every conversation; the other two forward their clients to
//! it. The visitors talk through one standby, their agent through the other, a supervisor watches from the
//! leader; every conversation has a call (str0m peers of the load tester) whose media flows through the
//! leader's SFU. Then, [`ROUNDS`] times, while all twenty conversations chat, the leader is killed with
//! SIGKILL (the last time stopped with SIGTERM, which in a cluster hands the conversations over) and
//! restarted, as a service manager would: a standby takes the lease, restores every
//! conversation from PostgreSQL, the clients reconnect through the nodes left and resume, and each call is
//! offered again. During the last round Redis is restarted empty: the leader keeps its lease and nothing is
//! lost. Every acknowledged message must come back exactly once after each failover, and be in the archive
//! exactly once at the end; the times until the chats and the calls are back are printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod live_common;
mod rounds;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use relaydesk_loadtest::media::{MediaConfig, MediaEngine, Peer};
use serde_json::{Value, json};

use common::pg::PgSchema;
use common::process;
use common::redis::{PrivateRedis, free_port};
use rounds::*;

/// The nodes' ids.
const NODES: [&str; 3] = ["a", "b", "c"];
/// Conversations chatting at once, each with a call.
const CONVERSATIONS: usize = 20;
/// Leader losses: SIGKILLs, the last one a SIGTERM.
const ROUNDS: usize = 3;
/// The registry's heartbeat and time to live (ms): how soon a dead leader's lease runs out.
const HEARTBEAT_MS: u64 = 200;
const TTL_MS: u64 = 1_500;
/// The first admin's password.
const ADMIN_PASSWORD: &str = "a-cluster-test-admin-password";
/// Bound of every wait on the cluster.
const WAIT: Duration = Duration::from_secs(60);

struct Cluster {
    data: PathBuf,
    config: PathBuf,
    password_file: PathBuf,
    redis_url: String,
    /// The running nodes, by index into [`NODES`].
    nodes: Vec<Option<Server>>,
}

/// Serialises this file's tests: each runs three nodes on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Cluster {
    /// Three nodes (started one after the other: the first takes the lease and creates the certificate and
    /// the master key) in `dir`, on `schema` and the Redis at `redis_url`.
    fn start(dir: &std::path::Path, schema: &PgSchema, redis_url: String) -> Cluster {
        let password_file = dir.join("admin.pw");
        std::fs::write(&password_file, format!("{ADMIN_PASSWORD}\n")).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[live]\nsessions_per_minute_per_address = 10000\nresume_grace_ms = 60000\nmessages_per_second = 1000\n\
                 message_burst = 1000\nmax_messages_per_conversation = 100000\n\
                 [live.limits]\nmax_text_bytes_per_conversation = 16777216\nmax_concurrent_uploads = 64\n\
                 [live.files]\nmax_per_conversation = 100\n\
                 [http]\ntrusted_proxies = [\"127.0.0.1\"]\n\
                 [database]\nurl = {:?}\npool_size = 4\n\
                 [cluster]\nkey_prefix = \"relaydesk-cluster-test\"\nheartbeat_ms = {HEARTBEAT_MS}\nttl_ms = {TTL_MS}\n",
                schema.url(),
            ),
        )
        .unwrap();
        let mut cluster = Cluster {
            data: dir.join("data"),
            config,
            password_file,
            redis_url,
            nodes: (0..NODES.len()).map(|_| None).collect(),
        };
        for i in 0..NODES.len() {
            cluster.start_node(i);
        }
        cluster
    }

    fn start_node(&mut self, i: usize) {
        let args: [&OsStr; 4] = [
            "--node-id".as_ref(),
            NODES[i].as_ref(),
            "--cluster".as_ref(),
            self.redis_url.as_ref(),
        ];
        self.nodes[i] = Some(start_with(&self.data, &self.config, &self.password_file, &args));
    }

    fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().unwrap()
    }

    /// `relaydesk cluster status --json`; None while Redis does not answer.
    fn status(&self) -> Option<Vec<Value>> {
        let out = process::output_of(
            std::process::Command::new(env!("CARGO_BIN_EXE_relaydesk"))
                .arg("--config")
                .arg(&self.config)
                .args(["--cluster", &self.redis_url, "cluster", "status", "--json"]),
        );
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<Value>(&out.stdout).ok()?.as_array().cloned()
    }

    /// Waits (bounded) until the registry lists every running node, one of them as the leader, and every
    /// node answers `/healthz` (a standby by forwarding it to the leader); returns the leader's index.
    async fn ready(&self) -> usize {
        let start = Instant::now();
        let running: Vec<&str> = (0..NODES.len())
            .filter(|i| self.nodes[*i].is_some())
            .map(|i| NODES[i])
            .collect();
        let leader = loop {
            let listed = tokio::task::block_in_place(|| self.status()).unwrap_or_default();
            let ids: Vec<&str> = listed.iter().filter_map(|n| n["id"].as_str()).collect();
            let leaders: Vec<&str> = listed
                .iter()
                .filter(|n| n["role"] == "leader")
                .filter_map(|n| n["id"].as_str())
                .collect();
            if ids == running && leaders.len() == 1 {
                break NODES.iter().position(|n| *n == leaders[0]).unwrap();
            }
            assert!(start.elapsed() < WAIT, "no single leader among {running:?}: {listed:?}");
            tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS / 2)).await;
        };
        for node in self.nodes.iter().flatten() {
            let client = node.client();
            loop {
                if try_request(node.addr, &client, "GET", "/healthz", &[], Vec::new())
                    .await
                    .is_some_and(|(status, _)| status == 200)
                {
                    break;
                }
                assert!(start.elapsed() < WAIT, "node {} does not reach the leader", node.addr);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        leader
    }

    fn kill(&mut self, i: usize) {
        let mut node = self.nodes[i].take().unwrap();
        node.process.child.kill().unwrap();
        node.process.child.wait().unwrap();
    }

    /// An orderly stop (SIGTERM); the node must exit with success.
    fn stop(&mut self, i: usize) {
        let mut node = self.nodes[i].take().unwrap();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &node.process.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = process::wait_within(&mut node.process.child);
        assert!(exit.success(), "node {}: {exit:?}", NODES[i]);
    }
}

/// A WebSocket through `server`, tried again (bounded) while the cluster has no leader to forward to.
async fn ws_through(server: &Server, path: &str, origin: &str, cookie: Option<&str>) -> Stream {
    let start = Instant::now();
    loop {
        if let Some(ws) = server.ws(path, origin, cookie).await {
            return ws;
        }
        assert!(
            start.elapsed() < WAIT,
            "no socket through {} within {WAIT:?}",
            server.addr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls in every conversation: the visitor offers on its socket, the agent on the console, each with a
/// peer of `engine`. Returns how many peers were added.
async fn calls(visitors: &mut [Stream], agent: &mut Stream, convs: &[Conv], engine: &MediaEngine) -> u64 {
    let local = std::net::Ipv4Addr::LOCALHOST.into();
    for (ws, c) in visitors.iter_mut().zip(convs) {
        let mut vp = Peer::new(local).unwrap();
        let mut ap = Peer::new(local).unwrap();
        offer_call(ws, None, &mut vp, false).await;
        offer_call(agent, Some(&c.id), &mut ap, false).await;
        engine.add(vp).unwrap();
        engine.add(ap).unwrap();
    }
    2 * convs.len() as u64
}

/// Waits (bounded) until `want` peers of `engine` receive media; returns, for each, the time since `since`
/// at which it was first seen receiving.
async fn until_receiving(engine: &MediaEngine, want: u64, since: Instant) -> Vec<Duration> {
    let mut times = Vec::new();
    loop {
        let receiving = engine.snapshot().receiving;
        while (times.len() as u64) < receiving {
            times.push(since.elapsed());
        }
        if receiving >= want {
            return times;
        }
        assert!(since.elapsed() < WAIT, "{receiving} of {want} peers receive media");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Median, 95th percentile and maximum, in seconds.
fn spread(times: &mut [Duration]) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64();
    format!("median {:.2} s, p95 {:.2} s, max {:.2} s", at(0.5), at(0.95), at(1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_chat_and_call_across_nodes_and_survive_the_loss_of_the_leader_and_of_redis() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut rng = Rng(0x5eed_c1a5_7e12_0001);
    let schema = PgSchema::create();
    let redis_port = free_port();
    let mut redis = Some(PrivateRedis::start(redis_port));
    let redis_url = redis.as_ref().unwrap().url();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &schema, redis_url);
    let mut leader = cluster.ready().await;
    let table = process::output_of(
        std::process::Command::new(env!("CARGO_BIN_EXE_relaydesk"))
            .arg("--config")
            .arg(&cluster.config)
            .args(["--cluster", &cluster.redis_url, "cluster", "status"]),
    );
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("NODE                     ROLE"), "{table}");
    assert!(
        table.contains(&format!(
            "3 node(s), 0 open conversation(s), 0 of them queued; {} leads",
            NODES[leader]
        )),
        "{table}"
    );
    let (mut v, mut a) = ((leader + 1) % 3, (leader + 2) % 3);
    eprintln!(
        "leader {}; visitors through {}, the agent through {}",
        NODES[leader], NODES[v], NODES[a]
    );

    // Setup through a standby: a group, a site key, an agent and a supervisor.
    let admin = cluster.node(v).client();
    assert_eq!(admin.login("admin", ADMIN_PASSWORD).await.status, 200);
    assert_eq!(
        admin
            .post_json("/api/v1/admin/groups", &json!({"name": "sales"}))
            .await
            .status,
        201
    );
    let key = live_common::site_key(&admin, "sales", "shop").await;
    let mut cookies = Vec::new();
    for (name, role) in [("alice", "agent"), ("sam", "supervisor")] {
        let r = admin
            .post_json(
                "/api/v1/admin/users",
                &json!({"username": name, "display_name": name, "role": role, "groups": ["sales"],
                        "password": "correct horse battery", "max_conversations": 25}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let c = cluster.node(a).client();
        assert_eq!(c.login(name, "correct horse battery").await.status, 200);
        cookies.push(c.cookie.lock().unwrap().clone().unwrap());
    }
    let (mut agent, listed) = console(cluster.node(a), &cookies[0]).await;
    assert!(listed.is_empty());
    let mut convs: Vec<Conv> = Vec::new();
    let mut visitors: Vec<Stream> = Vec::new();
    for _ in 0..CONVERSATIONS {
        let (ws, id, welcome) = join_accepted(cluster.node(v), &key, &mut agent).await;
        convs.push(Conv {
            id,
            resume_token: welcome["resume_token"].as_str().unwrap().to_owned(),
            files_token: welcome["files_token"].as_str().unwrap().to_owned(),
            ..Conv::default()
        });
        visitors.push(ws);
    }
    let ids: Vec<String> = convs.iter().map(|c| c.id.clone()).collect();

    // The supervisor, on the leader itself, watches the first conversation: its visitor's next message
    // (sent through another node) reaches the watch.
    let leader_node = cluster.node(leader);
    let mut sam = ws_through(
        leader_node,
        "/api/v1/agent/ws",
        &format!("https://{}", leader_node.addr),
        Some(&cookies[1]),
    )
    .await;
    assert!(send(&mut sam, json!({"type": "hello", "resume": []})).await);
    assert!(send(&mut sam, json!({"type": "watch", "conversation": ids[0]})).await);
    assert!(
        send(
            &mut visitors[0],
            json!({"type": "message", "client_id": "w1", "body": "for the watch"})
        )
        .await
    );
    loop {
        let v = next_json(&mut sam).await.expect("the supervisor's watch");
        if v["type"] == "message" && v["body"] == "for the watch" {
            assert_eq!(v["conversation"], ids[0].as_str());
            break;
        }
    }
    loop {
        let v = next_json(&mut visitors[0]).await.expect("echo");
        if v["type"] == "message" && v["client_id"] == "w1" {
            let seq = v["seq"].as_u64().unwrap();
            let m = Acked {
                id: v["id"].as_str().unwrap().to_owned(),
                body: "for the watch".into(),
                file: None,
            };
            record(&mut convs, &ids[0], seq, m);
            break;
        }
    }
    drop(sam);

    // A call in every conversation, its media through the leader's SFU.
    let mut engine = MediaEngine::start(1, MediaConfig::default()).unwrap();
    let offered = Instant::now();
    let peers = calls(&mut visitors, &mut agent, &convs, &engine).await;
    let mut first = until_receiving(&engine, peers, offered).await;
    eprintln!(
        "{peers} call legs across nodes receive media after the first offer: {}",
        spread(&mut first)
    );

    let mut chat_back: Vec<Duration> = Vec::new();
    let mut calls_back: Vec<Duration> = Vec::new();
    let mut takeovers: Vec<Duration> = Vec::new();
    let mut replayed_total = 0usize;
    let mut agent = Some(agent);
    for round in 0..ROUNDS {
        eprintln!("round {round}: chatting; leader {}", NODES[leader]);
        let mut tasks = Vec::new();
        for (i, ws) in visitors.drain(..).enumerate() {
            let node = cluster.node(v);
            let (token, addr, client) = (convs[i].files_token.clone(), node.addr, node.client());
            tasks.push(tokio::spawn(visitor_chat(ws, i, round, token, addr, client)));
        }
        let agent_task = tokio::spawn(agent_chat(agent.take().unwrap(), ids.clone(), round));
        // The kill moment of this round (the stimulus, not a synchronisation).
        tokio::time::sleep(Duration::from_millis(rng.between(300, 1500))).await;
        if round == ROUNDS - 1 {
            // Redis restarts empty under the chat: the sockets keep going (the forwarding needs Redis only
            // to open a connection), the leader writes its lease back, and the standbys find it again.
            drop(redis.take());
            let metrics = cluster.node(leader).client();
            let start = Instant::now();
            loop {
                let text = metrics.get("/metrics").await.text();
                if common::metric(&text, "relaydesk_cluster_lease_failures_total") >= 2.0 {
                    break;
                }
                assert!(start.elapsed() < WAIT, "no failed lease renewal counted");
                tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS)).await;
            }
            redis = Some(PrivateRedis::start(redis_port));
            let again = cluster.ready().await;
            assert_eq!(again, leader, "the leader kept its lease across the Redis restart");
            eprintln!(
                "Redis restarted empty: the cluster was whole again {:.2} s after",
                start.elapsed().as_secs_f64()
            );
            assert!(
                tasks.iter().all(|t| !t.is_finished()) && !agent_task.is_finished(),
                "a chat stopped while Redis was away"
            );
        }
        let killed = Instant::now();
        if round == ROUNDS - 1 {
            // The last leader stops in order: in a cluster it hands its conversations over (sockets closed
            // with 1012, nothing ended), so every conversation resumes on the next leader as after a kill.
            cluster.stop(leader);
        } else {
            cluster.kill(leader);
        }
        drop(engine);
        collect_round(tasks, agent_task, &mut convs).await;
        // The killed node comes back (as a service manager restarts it): a standby now, or the leader
        // again if it takes the lease first.
        cluster.start_node(leader);
        leader = cluster.ready().await;
        takeovers.push(killed.elapsed());
        eprintln!(
            "round {round}: served again {:.2} s after the {}",
            killed.elapsed().as_secs_f64(),
            if round == ROUNDS - 1 { "SIGTERM" } else { "SIGKILL" }
        );
        (v, a) = ((leader + 1) % 3, (leader + 2) % 3);
        let (mut console_ws, mut listed) = {
            let node = cluster.node(a);
            let ws = ws_through(
                node,
                "/api/v1/agent/ws",
                &format!("https://{}", node.addr),
                Some(&cookies[0]),
            )
            .await;
            console_after(ws).await
        };
        listed.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(
            listed, want,
            "round {round}: the agent does not find their conversations"
        );
        for c in convs.iter_mut() {
            let (ws, n) = resume_and_check(cluster.node(v), c, round + 1 == ROUNDS).await;
            replayed_total += n;
            chat_back.push(killed.elapsed());
            visitors.push(ws);
        }
        engine = MediaEngine::start(1, MediaConfig::default()).unwrap();
        let peers = calls(&mut visitors, &mut console_ws, &convs, &engine).await;
        calls_back.extend(until_receiving(&engine, peers, killed).await);
        agent = Some(console_ws);
    }
    drop(engine);
    eprintln!(
        "{ROUNDS} leader losses ({} SIGKILL, 1 SIGTERM), {CONVERSATIONS} conversations with calls: the cluster served again {}; chats \
         resumed {}; call legs received media again {}",
        ROUNDS - 1,
        spread(&mut takeovers),
        spread(&mut chat_back),
        spread(&mut calls_back)
    );
    assert!(calls_back.iter().all(|t| *t < WAIT));

    // Files shared through a standby download intact through the other.
    check_downloads(cluster.node(a), &convs).await;
    // The agent ends every conversation; each visitor hears it.
    let mut agent = agent.unwrap();
    for (c, ws) in convs.iter().zip(visitors.iter_mut()) {
        assert!(send(&mut agent, json!({"type": "end", "conversation": c.id})).await);
        loop {
            let v = next_json(ws).await.expect("ended");
            if v["type"] == "ended" {
                assert_eq!(v["reason"], "agent_ended", "conversation {}", c.id);
                break;
            }
        }
    }
    // Orderly stops, standbys first; then the archive is checked offline.
    for i in [v, a, leader] {
        cluster.stop(i);
    }
    let url = schema.url();
    let data = cluster.data.clone();
    tokio::task::block_in_place(|| {
        let store = relaydesk_signalling::store::open(
            &relaydesk_signalling::store::DatabaseConfig {
                url: Some(url),
                ..Default::default()
            },
            &data,
        )
        .unwrap();
        let (checked, files) = check_transcripts(store.as_ref(), &data.join("master.key"), &convs);
        assert_eq!(store.live_count().unwrap(), 0);
        eprintln!(
            "{checked} acknowledged messages and {files} files checked (resume replays: {replayed_total}) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert!(
            checked >= ROUNDS * CONVERSATIONS,
            "too little traffic to prove anything: {checked}"
        );
        assert!(files > 0);
    });
}

/// The load tester given the three nodes' URLs: conversation i's visitor uses node i % 3 and the agent
/// another node; every conversation is set up with its call, and the report has a line per node with what
/// it carried (the standbys forwarded, the leader served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tester_spreads_conversations_over_the_nodes_and_reports_each() {
    use clap::Parser as _;
    use relaydesk_loadtest::http::{BaseUrl, Client, tls_config};
    use relaydesk_loadtest::target::relaydesk::{RelayDeskOptions, RelayDeskTarget};

    let _alone = ONE_AT_A_TIME.lock().await;
    let schema = PgSchema::create();
    let redis = PrivateRedis::start(free_port());
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), &schema, redis.url());
    let leader = cluster.ready().await;
    let urls: Vec<String> = (0..NODES.len())
        .map(|i| format!("https://{}", cluster.node(i).addr))
        .collect();
    let mut args = vec!["relaydesk-loadtest".to_owned()];
    for u in &urls {
        args.extend(["--url".to_owned(), u.clone()]);
    }
    let pw = cluster.password_file.to_str().unwrap().to_owned();
    args.extend(
        [
            "--insecure",
            "--setup",
            "--admin-password-file",
            &pw,
            "--conversations",
            "6",
            "--ramp",
            "10",
            "--duration",
            "3s",
            "--audio",
            "--chat-rate",
            "4",
            "--quiet",
            "--shards",
            "1",
        ]
        .map(str::to_owned),
    );
    let cli = relaydesk_loadtest::cli::Cli::try_parse_from(&args).unwrap();
    cli.run.validate().unwrap();
    let tls = tls_config(None, true).unwrap();
    let clients = urls
        .iter()
        .map(|u| Client::new(BaseUrl::parse(u).unwrap(), Some(tls.clone()), Duration::from_secs(20)))
        .collect();
    let opts = RelayDeskOptions::from_args(&cli.run).unwrap();
    let local = std::net::Ipv4Addr::LOCALHOST.into();
    let target = std::sync::Arc::new(RelayDeskTarget::with_nodes(clients, tls, local, opts));
    let plan = relaydesk_loadtest::run::Plan {
        conversations: 6,
        ramp: 10.0,
        duration: Duration::from_secs(3),
        media: MediaConfig {
            audio: true,
            ..MediaConfig::default()
        },
        shards: 1,
        server_pid: None,
        progress: false,
        lifetime: None,
        sample_every: None,
        warmup: Duration::ZERO,
    };
    let mut report = relaydesk_loadtest::run::run(std::sync::Arc::clone(&target), plan)
        .await
        .unwrap();
    report.nodes = target.node_report().await;
    let table = report.table();
    assert!(report.complete, "{table}");
    assert_eq!(report.established, 6, "{table}");
    assert_eq!(report.media.receiving, 12, "every call leg received media: {table}");
    assert_eq!(report.masking_violations, 0, "{table}");
    assert_eq!(report.nodes.len(), 3, "{table}");
    for (i, n) in report.nodes.iter().enumerate() {
        assert_eq!(n.url, urls[i]);
        assert_eq!(
            (n.started, n.assigned, n.failed),
            (2, 2, 0),
            "node {}: {table}",
            NODES[i]
        );
        assert_eq!(n.to_assigned.as_ref().map(|p| p.count), Some(2), "{table}");
        let sum = |name: &str| -> f64 {
            n.metrics
                .iter()
                .filter(|(k, _)| k.starts_with(name))
                .fold(0.0, |a, (_, v)| a + v)
        };
        if i == leader {
            assert_eq!(sum("relaydesk_cluster_leader"), 1.0, "{table}");
            assert_eq!(
                sum("relaydesk_visitor_tokens_issued_total"),
                6.0,
                "the leader serves them all: {table}"
            );
        } else {
            assert_eq!(sum("relaydesk_cluster_leader"), 0.0, "{table}");
            assert!(
                sum("relaydesk_cluster_forwarded_total") > 0.0,
                "node {} forwarded nothing: {table}",
                NODES[i]
            );
            assert_eq!(sum("relaydesk_visitor_tokens_issued_total"), 0.0, "{table}");
        }
        assert!(table.contains(&format!("node {}", urls[i])), "{table}");
    }
    eprintln!("{table}");
}
