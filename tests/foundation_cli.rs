//! Foundation: the `relaydesk` binary — offline CLI on a temporary data directory, and `serve` from nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use relaydesk_signalling::store::prelude::*;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::process::{line_reader, output_of, output_within, rest_of};

const BIN: &str = env!("CARGO_BIN_EXE_relaydesk");

fn run(dir: &Path, args: &[&str]) -> Output {
    run_stdin(dir, args, None)
}

fn run_stdin(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("RELAYDESK_DATA_DIR")
        .env_remove("RELAYDESK_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    output_within(child)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn fails(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure; stdout: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The offline commands take `--database` as the server does: on PostgreSQL they work on the shared
/// database, and nothing is written to a SQLite file in the data directory.
#[test]
fn offline_commands_work_on_a_postgres_database() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let schema = common::pg::PgSchema::create();
    let url = schema.url();
    let pg = |args: &[&str]| {
        let mut all = vec!["--database", url.as_str()];
        all.extend_from_slice(args);
        run(d, &all)
    };
    ok(&pg(&["group", "add", "sales"]));
    fails(&pg(&["group", "add", "SALES"]), "already exists");
    let out = ok(&pg(&["user", "add", "alice", "--role", "agent", "--group", "sales"]));
    assert!(out.contains("password"), "{out}");
    assert!(ok(&pg(&["user", "list"])).contains("alice"));
    assert!(
        ok(&pg(&[
            "key",
            "add",
            "--group",
            "sales",
            "--origin",
            "https://shop.example"
        ]))
        .contains("pk_")
    );
    assert!(ok(&pg(&["key", "list"])).contains("https://shop.example"));
    assert!(
        !d.join("relaydesk.db").exists(),
        "no SQLite file beside a PostgreSQL store"
    );
    // What the commands wrote is in PostgreSQL, with its audit trail.
    let config = relaydesk_signalling::store::DatabaseConfig {
        url: Some(url.clone()),
        ..Default::default()
    };
    let store = relaydesk_signalling::store::open(&config, d).unwrap();
    assert_eq!(store.user_by_name("alice").unwrap().groups, vec!["sales".to_string()]);
    let actions: Vec<String> = store.recent_audit(10).unwrap().into_iter().map(|r| r.action).collect();
    assert!(actions.len() >= 3, "{actions:?}");
    // A wrong URL is a clear error that does not echo the password.
    let out = run(d, &["--database", "postgres://u:hunter2@127.0.0.1:1/x", "user", "list"]);
    assert!(!out.status.success());
    assert!(!text(&out.stderr).contains("hunter2"), "{}", text(&out.stderr));
}

#[test]
fn offline_users_groups_and_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(&run(d, &["group", "add", "sales"]));
    fails(&run(d, &["group", "add", "sales"]), "already exists");
    assert!(ok(&run(d, &["group", "list"])).contains("sales"));
    // Recording policies: set at creation or later, listed, and a wrong value refused.
    assert!(ok(&run(d, &["group", "add", "billing", "--recording", "on_request"])).contains("recording on_request"));
    ok(&run(d, &["group", "set", "sales", "--recording", "always"]));
    let listed = ok(&run(d, &["group", "list"]));
    let policy = |name: &str| {
        listed
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_owned)
    };
    assert_eq!(policy("sales").as_deref(), Some("always"), "{listed}");
    assert_eq!(policy("billing").as_deref(), Some("on_request"), "{listed}");
    fails(
        &run(d, &["group", "set", "sales", "--recording", "sometimes"]),
        "off, always or on_request",
    );
    fails(&run(d, &["group", "set", "nobody", "--recording", "off"]), "not found");

    let out = ok(&run(
        d,
        &[
            "user",
            "add",
            "alice",
            "--role",
            "agent",
            "--group",
            "sales",
            "--display-name",
            "Alice A.",
        ],
    ));
    assert!(out.contains("created user alice"), "{out}");
    let pw = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("generated password printed")
        .to_string();
    assert_eq!(pw.len(), 20);
    fails(&run(d, &["user", "add", "alice", "--role", "agent"]), "already exists");
    fails(
        &run(d, &["user", "add", "bob", "--role", "agent", "--group", "nope"]),
        "unknown group",
    );
    fails(&run(d, &["user", "add", "bob", "--role", "boss"]), "unknown role");
    fails(&run(d, &["user", "add", "has space", "--role", "agent"]), "username");
    fails(
        &run_stdin(
            d,
            &["user", "add", "bob", "--role", "agent", "--password-stdin"],
            Some("short\n"),
        ),
        "password",
    );
    let out = ok(&run_stdin(
        d,
        &[
            "user",
            "add",
            "bob",
            "--role",
            "supervisor",
            "--password-stdin",
            "--max-conversations",
            "2",
        ],
        Some("bob-password\n"),
    ));
    assert!(!out.contains("password:"), "no password printed when given: {out}");

    let list = ok(&run(d, &["user", "list"]));
    assert!(
        list.contains("alice") && list.contains("Alice A.") && list.contains("sales"),
        "{list}"
    );
    assert!(list.contains("bob") && list.contains("supervisor"), "{list}");
    assert!(!list.contains(&pw));

    ok(&run(d, &["user", "disable", "alice"]));
    assert!(
        ok(&run(d, &["user", "list"]))
            .lines()
            .any(|l| l.contains("alice") && l.contains("disabled"))
    );
    fails(&run(d, &["user", "disable", "nobody"]), "not found");
    let out = ok(&run_stdin(
        d,
        &["user", "passwd", "bob", "--password-stdin"],
        Some("new-bob-password\n"),
    ));
    assert!(out.contains("changed"));

    // Site keys.
    let key = ok(&run(
        d,
        &[
            "key",
            "add",
            "--group",
            "sales",
            "--origin",
            "HTTPS://Shop.Example:443",
            "--origin",
            "http://localhost:3000",
        ],
    ));
    let key = key.trim().to_string();
    assert!(key.starts_with("pk_") && key.len() == 35, "{key}");
    fails(
        &run(
            d,
            &[
                "key",
                "add",
                "--group",
                "sales",
                "--origin",
                "https://shop.example/path",
            ],
        ),
        "bad origin",
    );
    fails(
        &run(d, &["key", "add", "--group", "sales", "--origin", "not a url"]),
        "bad origin",
    );
    fails(
        &run(
            d,
            &["key", "add", "--group", "nope", "--origin", "https://shop.example"],
        ),
        "unknown group",
    );
    let list = ok(&run(d, &["key", "list"]));
    let line = list.lines().find(|l| l.contains(&key)).unwrap();
    assert!(
        line.contains("active") && line.contains("https://shop.example") && line.contains("http://localhost:3000"),
        "{line}"
    );
    ok(&run(d, &["key", "revoke", &key]));
    assert!(
        ok(&run(d, &["key", "list"]))
            .lines()
            .any(|l| l.contains(&key) && l.contains("revoked"))
    );
    fails(&run(d, &["key", "revoke", "pk_unknown"]), "not found");

    // CLI changes are audited, without secrets.
    let db = relaydesk_signalling::Db::open(d).unwrap();
    let audit = db.recent_audit(100).unwrap();
    for action in [
        "group.create",
        "user.create",
        "user.disable",
        "user.passwd",
        "key.create",
        "key.revoke",
    ] {
        assert!(
            audit
                .iter()
                .any(|e| e.action == action && e.actor.as_deref() == Some("cli")),
            "{action}"
        );
    }
    let all = format!("{audit:?}");
    assert!(!all.contains(&pw) && !all.contains("bob-password"));
}

struct Started {
    child: std::process::Child,
    lines: Vec<String>,
    addr: std::net::SocketAddr,
}

fn start_serve(dir: &Path, extra: &[&str]) -> Started {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log", "info"])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env_remove("RELAYDESK_DATA_DIR")
        .env_remove("RELAYDESK_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = line_reader(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let addr = loop {
        // Bounded wait for the startup lines (the first start generates a certificate and hashes a password).
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server printed its address");
        lines.push(line.clone());
        if let Some(a) = line.strip_prefix("listening on https://") {
            break a.parse().unwrap();
        }
    };
    // The address line is the last startup line; later stdout output would be a bug.
    drop(rx);
    Started { child, lines, addr }
}

fn sigterm_and_wait(mut s: Started) -> String {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(s.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let stderr = s.child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = s.child.wait();
        let _ = tx.send(r);
    });
    let exit = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("exited within 20 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    // The server has exited: its stderr ends (read with a bound all the same).
    rest_of(&line_reader(stderr))
}

#[tokio::test]
async fn serve_starts_from_nothing_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fresh"); // does not exist yet
    let s = start_serve(&dir, &[]);
    let out = s.lines.join("\n");
    let password = s
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("created user `admin` with password: "))
        .expect("admin password printed")
        .to_string();
    let fp_line = s
        .lines
        .iter()
        .find(|l| l.starts_with("TLS certificate SHA-256 fingerprint: "))
        .expect("fingerprint");
    let fp = fp_line.rsplit(" ").next().unwrap().to_string();
    assert_eq!(fp.len(), 95, "{fp}");
    // The printed fingerprint is the one of the certificate written to the data dir.
    let pem = std::fs::read_to_string(dir.join("tls/cert.pem")).unwrap();
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert_eq!(relaydesk_signalling::tls::fingerprint(der.as_ref()), fp);
    assert!(dir.join("relaydesk.db").exists());

    let client = common::Client::new(s.addr, &dir.join("tls/cert.pem"));
    let r = client.get("/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], env!("CARGO_PKG_VERSION"));
    let r = client.login("admin", &password).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = client.cookie.lock().unwrap().clone().unwrap();
    assert_eq!(client.login("admin", "a-wrong-password").await.status, 401);

    let logs = sigterm_and_wait(s);
    assert!(logs.contains("login succeeded"), "{logs}");
    assert!(!logs.contains(&password), "the admin password reached the logs");
    assert!(!logs.contains("a-wrong-password"), "a tried password reached the logs");
    assert!(!logs.contains(&token), "the session token reached the logs");
    assert!(!logs.contains(" ERROR "), "{logs}");
    assert!(out.contains("listening on"));

    // Second start: same certificate, no new admin password; the CLI works on the same data dir.
    ok(&run(&dir, &["group", "add", "sales"]));
    let s = start_serve(&dir, &[]);
    assert!(s.lines.iter().all(|l| !l.contains("password")), "{:?}", s.lines);
    assert!(s.lines.iter().any(|l| l.contains(&fp)), "certificate reused");
    let client = common::Client::new(s.addr, &dir.join("tls/cert.pem"));
    assert_eq!(client.login("admin", &password).await.status, 200);
    assert_eq!(
        client.get("/api/v1/admin/groups").await.json()["groups"][0]["name"],
        "sales"
    );
    // The CLI changes the database while the server runs; the server sees the change at once.
    ok(&run_stdin(
        &dir,
        &[
            "user",
            "add",
            "live",
            "--role",
            "agent",
            "--group",
            "sales",
            "--password-stdin",
        ],
        Some("live-password\n"),
    ));
    let live = common::Client::new(s.addr, &dir.join("tls/cert.pem"));
    let r = live.login("live", "live-password").await;
    assert_eq!(r.status, 200, "{}", r.text());
    ok(&run(&dir, &["user", "disable", "live"]));
    assert_eq!(
        live.get("/api/v1/auth/me").await.status,
        401,
        "disabled by the CLI: session ended"
    );
    sigterm_and_wait(s);
}

#[tokio::test]
async fn serve_with_admin_password_file_and_bad_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let pwfile = tmp.path().join("admin-pw");
    std::fs::write(&pwfile, "from-a-file-pw\n").unwrap();
    let s = start_serve(&dir, &["--admin-password-file", pwfile.to_str().unwrap()]);
    assert!(
        s.lines.iter().any(|l| l.contains("password from the file")),
        "{:?}",
        s.lines
    );
    assert!(!s.lines.join("\n").contains("from-a-file-pw"));
    let client = common::Client::new(s.addr, &dir.join("tls/cert.pem"));
    assert_eq!(client.login("admin", "from-a-file-pw").await.status, 200);
    sigterm_and_wait(s);

    // Operator-supplied PEM files: the server uses them and generates nothing.
    let dir2 = tmp.path().join("data2");
    let cert = dir.join("tls/cert.pem");
    let key = dir.join("tls/key.pem");
    let s = start_serve(
        &dir2,
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    assert!(!dir2.join("tls").exists(), "no certificate generated");
    let client = common::Client::new(s.addr, &cert);
    assert_eq!(client.get("/healthz").await.status, 200);
    sigterm_and_wait(s);
    let missing = output_of(
        Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                "/nonexistent.pem",
                "--tls-key",
                "/nonexistent.key",
            ])
            .arg("--data-dir")
            .arg(&dir2),
    );
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("/nonexistent.pem"),
        "{}",
        text(&missing.stderr)
    );

    // A config file with an unknown key is refused with a clear message.
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "listen_address = \"127.0.0.1:0\"\n").unwrap();
    let out = output_of(Command::new(BIN).args(["--config", cfg.to_str().unwrap(), "serve"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unknown field"), "{}", text(&out.stderr));
    // The example config parses and its values apply (data dir overridden by the flag).
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/relaydesk.example.toml");
    let out = output_of(Command::new(BIN).args([
        "--config",
        example.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "group",
        "list",
    ]));
    ok(&out);
}
