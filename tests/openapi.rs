//! The OpenAPI description served at `GET /api/v1/openapi.json`:
//! - it lists exactly the paths of the router the server runs, each with exactly the methods it answers;
//! - schemathesis, run against the real binary from the served description with an admin session, finds no
//!   server error, no crash and no answer that disagrees with the description.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, ServerProcess, TestServer};
use serde_json::Value;

/// The schemathesis release the suite runs; `cargo xtask test` installs exactly this one (xtask/src/main.rs,
/// `SCHEMATHESIS_VERSION`).
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// The methods probed on every path (HEAD is answered wherever GET is, by axum itself).
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Paths and their methods, as the description lists them.
fn described_operations(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.to_ascii_uppercase())
                .filter(|m| METHODS.contains(&m.as_str()) || m == "HEAD" || m == "TRACE")
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// The paths of a built axum router. axum has no API that lists them; its `Debug` output prints the path
/// table (`Node { paths: {RouteId(0): "/healthz", …} }`) of the main router first. If a later axum prints
/// something else, this fails loudly (no path found) rather than passing.
fn router_paths(router: &axum::Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    let start = debug
        .find("Node { paths: {")
        .expect("axum's Debug output shows the path table")
        + 15;
    let table = &debug[start..];
    let end = table.find('}').map(|i| {
        // Path parameters have braces inside quotes: find the brace that closes the map, outside quotes.
        let mut quoted = false;
        let mut escaped = false;
        for (j, c) in table.char_indices() {
            match c {
                '\\' if quoted && !escaped => {
                    escaped = true;
                    continue;
                }
                '"' if !escaped => quoted = !quoted,
                '}' if !quoted => return j,
                _ => {}
            }
            escaped = false;
        }
        i
    });
    let table = &table[..end.expect("the path table ends")];
    let paths: BTreeSet<String> = table.split('"').skip(1).step_by(2).map(str::to_owned).collect();
    assert!(paths.contains("/healthz"), "path table not understood: {table}");
    paths
}

/// A concrete URL for a path template (every parameter `1`).
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push('1');
            }
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_lists_exactly_the_routes_and_methods_of_the_router() {
    let server = TestServer::start().await;
    let c = server.client();
    let r = c.get("/api/v1/openapi.json").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let described = described_operations(&doc);

    // The paths: those of the very router the server builds, no more, no fewer.
    let router = relaydesk_signalling::http::router(server.running().state().clone());
    let served = router_paths(&router);
    let listed: BTreeSet<String> = described.keys().cloned().collect();
    assert_eq!(
        served.difference(&listed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "routes the description lacks"
    );
    assert_eq!(
        listed.difference(&served).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "described paths the router lacks"
    );

    // The methods: every described one reaches a handler, every other one is the router's 405.
    for (path, methods) in &described {
        assert!(!methods.is_empty(), "{path} has no operation");
        for method in METHODS {
            let r = c
                .raw(method, &concrete(path), &[("x-relaydesk-csrf", "1")], Vec::new())
                .await;
            let fallback_405 = r.status == 405 && r.error_code() == "method_not_allowed";
            let fallback_404 = r.status == 404 && r.json()["error"]["message"] == "no such endpoint";
            if methods.contains(method) {
                assert!(
                    !fallback_405 && !fallback_404,
                    "{method} {path} is described but not routed: {} {}",
                    r.status,
                    r.text()
                );
            } else {
                assert!(
                    fallback_405,
                    "{method} {path} is routed but not described: {} {}",
                    r.status,
                    r.text()
                );
            }
        }
    }

    // What a client needs to call the protected routes is in the description.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["session"]["in"], "cookie");
    assert_eq!(schemes["session"]["name"], "__Host-relaydesk_session");
    assert_eq!(schemes["csrf"]["in"], "header");
    assert_eq!(schemes["csrf"]["name"], "X-RelayDesk-CSRF");
    let create_user = &doc["paths"]["/api/v1/admin/users"]["post"];
    assert_eq!(
        create_user["security"],
        serde_json::json!([{"session": [], "csrf": []}])
    );
    for status in ["400", "401", "403", "408", "409", "413", "415"] {
        let content = &create_user["responses"][status]["content"]["application/json"]["schema"];
        assert_eq!(
            content["$ref"], "#/components/schemas/ErrorBody",
            "{status}: {create_user}"
        );
    }
    let ws = &doc["paths"]["/api/v1/visitor/ws"]["get"]["responses"];
    assert!(ws["101"].is_object() && ws["426"].is_object(), "{ws}");
}

/// The schemathesis program: `RELAYDESK_SCHEMATHESIS` (set by `cargo xtask test`), else the virtual
/// environment `cargo xtask install-deps` makes under the target directory. Never skipped: missing, the
/// test fails and says how to install it.
fn schemathesis() -> PathBuf {
    let program = std::env::var_os("RELAYDESK_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // CARGO_TARGET_TMPDIR is <target dir>/tmp.
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .unwrap()
                .join(format!("tools/schemathesis-{SCHEMATHESIS_VERSION}/bin/schemathesis"))
        });
    let version = Command::new(&program).arg("--version").output();
    match version {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains(SCHEMATHESIS_VERSION) => program,
        other => panic!(
            "schemathesis {SCHEMATHESIS_VERSION} is needed at {} ({other:?}): run `cargo xtask install-deps` \
             (or set RELAYDESK_SCHEMATHESIS to its program)",
            program.display()
        ),
    }
}

/// Bound of the whole schemathesis run (it takes about a minute here).
const SCHEMATHESIS_TIMEOUT: Duration = Duration::from_secs(600);

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_that_disagrees_with_the_description() {
    let st = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("admin.pw");
    let password = "schemathesis-admin-password";
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProcess::serve(&data, &config, &["--admin-password-file".as_ref(), pw.as_os_str()]);
    let addr: std::net::SocketAddr = server.url.trim_start_matches("https://").parse().unwrap();
    let cert = data.join("tls/cert.pem");

    // An admin session, so that the protected routes are exercised past their authentication.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = Client::new(addr, &cert);
    let r = rt.block_on(admin.login("admin", password));
    assert_eq!(r.status, 200, "{}", r.text());
    let cookie = admin.cookie.lock().unwrap().clone().unwrap();

    let seed = std::env::var("RELAYDESK_SCHEMATHESIS_SEED").unwrap_or_else(|_| "17".into());
    let mut cmd = Command::new(&st);
    cmd.current_dir(dir.path())
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", server.url))
        .args(["--tls-verify", cert.to_str().unwrap()])
        .args(["--header", &format!("Cookie: __Host-relaydesk_session={cookie}")])
        .args(["--header", "X-RelayDesk-CSRF: 1"])
        // Ours, not generated: a random cookie or CSRF value would only test the 401/403 paths.
        .args(["--generation-with-security-parameters", "false"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "25"])
        .args(["--seed", &seed])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "35"])
        // Logging out or changing the admin (a password, role or disabled flag ends its sessions) would end
        // the session the run uses: every later request would only see 401.
        .args(["--exclude-operation-id", "logout"])
        .args(["--exclude-operation-id", "update_user"])
        .args(["--no-color", "--output-truncate", "false"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("schemathesis starts");
    let stdout = common::process::line_reader(child.stdout.take().unwrap());
    let stderr = common::process::line_reader(child.stderr.take().unwrap());
    // Its output ends when it exits; bounded.
    let mut out = Vec::new();
    loop {
        let left = SCHEMATHESIS_TIMEOUT.saturating_sub(started.elapsed());
        match stdout.recv_timeout(left) {
            Ok(line) => out.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "schemathesis still running after {SCHEMATHESIS_TIMEOUT:?}:\n{}",
                    out.join("\n")
                );
            }
        }
    }
    let err = common::process::rest_of(&stderr);
    let status = common::process::wait_within(&mut child);
    let report = format!("{}\n{err}", out.join("\n"));
    println!("schemathesis ({:.0?}):\n{report}", started.elapsed());

    // No crash: the server is still running and answering.
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited:\n{report}"
    );
    let r = rt.block_on(admin.get("/api/v1/auth/me"));
    assert_eq!(r.status, 200, "the admin session survived the run: {}", r.text());
    assert!(status.success(), "schemathesis found failures ({status}):\n{report}");
    // It ran the operations (a run that tested nothing would also exit 0).
    assert!(
        report.contains("passed") && !report.contains("No operations"),
        "no operations tested:\n{report}"
    );
}

/// Found by schemathesis: a POST whose body the server refused before reading it (no files token) was
/// answered as if the connection stayed open, but hyper closed it (the unread body was in the way); the
/// client's next request on it failed with an EOF. A refused request with a body now says
/// `Connection: close`; the client opens a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_body_announces_that_the_connection_closes() {
    let server = TestServer::start().await;
    let c = server.client();
    let host = server.addr().to_string();
    for (path, headers) in [
        // Refused before the body is read: no files token, no session, no CSRF header.
        ("/api/v1/visitor/files?name=a.gif", vec![("content-type", "image/gif")]),
        (
            "/api/v1/admin/users",
            vec![("content-type", "application/json"), ("x-relaydesk-csrf", "1")],
        ),
        ("/api/v1/admin/groups", vec![("content-type", "application/json")]),
    ] {
        let mut sender = common::connected(&c).await;
        let mut req = hyper::Request::post(path).header("host", &host);
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(
            common::IO_TIMEOUT,
            sender.send_request(req.body(axum::body::Body::from("GIF")).unwrap()),
        )
        .await
        .expect("answered in time")
        .unwrap();
        assert!(resp.status().is_client_error(), "{path}: {}", resp.status());
        assert_eq!(
            resp.headers().get("connection").map(|v| v.to_str().unwrap()),
            Some("close"),
            "{path}"
        );
    }
    // A request without a body keeps its connection.
    let mut sender = common::connected(&c).await;
    let req = hyper::Request::get("/api/v1/auth/me")
        .header("host", &host)
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("connection").is_none());
}

/// Path and query parameters that axum's own extractors refused were answered in plain text, not with the
/// JSON error body every failure has (and the description promises): a file id or an asset name that is
/// not UTF-8 once decoded, a repeated `key` on the widget frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_paths_and_queries_get_the_json_error_body() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    for (path, code) in [
        ("/assets/%ff", "invalid_path"),
        ("/api/v1/visitor/files/%ff", "invalid_path"),
        ("/api/v1/agent/files/%ff", "invalid_path"),
        ("/widget/frame?key=a&key=b", "invalid_input"),
    ] {
        let r = admin.get(path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.header("content-type").as_deref(), Some("application/json"), "{path}");
        assert_eq!(r.error_code(), code, "{path}");
    }
    let r = admin
        .raw(
            "POST",
            "/api/v1/agent/conversations/%ff/files?name=a.txt",
            &[("content-type", "text/plain"), ("x-relaydesk-csrf", "1")],
            b"hello".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "invalid_path");
}
