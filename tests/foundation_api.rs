//! Foundation: the HTTPS API of a real server (real TLS, real SQLite) on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn healthz_and_metrics() {
    let mut t = TestServer::start().await;
    let c = t.client();
    let r = c.get("/healthz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["version"], env!("CARGO_PKG_VERSION"));
    c.get("/healthz").await;
    let m = c.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    assert!(m.text().contains("relaydesk_http_requests_total"), "{}", m.text());
    t.stop().await;
}

#[tokio::test]
async fn login_me_logout() {
    let mut t = TestServer::start().await;
    let c = t.client();
    assert_eq!(c.get("/api/v1/auth/me").await.error_code(), "unauthenticated");

    let r = c.login("admin", &t.admin_password).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["user"]["username"], "admin");
    assert_eq!(r.json()["user"]["role"], "admin");
    assert!(r.json()["user"].get("password_hash").is_none());
    let cookie = r.header("set-cookie").unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let token = c.cookie.lock().unwrap().clone().unwrap();
    assert!(token.len() >= 22, "at least 128 bits");
    // The database holds only the token's hash.
    let db = std::fs::read(t.dir.join("relaydesk.db")).unwrap();
    let wal = std::fs::read(t.dir.join("relaydesk.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "raw token stored"
        );
    }

    let me = c.get("/api/v1/auth/me").await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["user"]["username"], "admin");

    let out = c.post_json("/api/v1/auth/logout", &json!({})).await;
    assert_eq!(out.status, 204);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert!(c.cookie.lock().unwrap().is_none());
    // The old token is dead even if a client kept it.
    *c.cookie.lock().unwrap() = Some(token);
    assert_eq!(c.get("/api/v1/auth/me").await.status, 401);
    t.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let mut t = TestServer::start().await;
    let c = t.client();
    let wrong = c.login("admin", "not the password").await;
    let unknown = c.login("nobody", "not the password").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(unknown.status, 401);
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.error_code(), "invalid_credentials");
    assert!(c.cookie.lock().unwrap().is_none());
    // Audited, with the username as given and the address, never the password.
    let audit = t.running().state().store.call(|db| db.recent_audit(50)).await.unwrap();
    let failures: Vec<_> = audit.iter().filter(|a| a.action == "login.failure").collect();
    assert_eq!(failures.len(), 2);
    assert!(failures.iter().any(|a| a.target.as_deref() == Some("nobody")));
    assert!(failures.iter().all(|a| a.client_addr.as_deref() == Some("127.0.0.1")));
    let all = format!("{audit:?}");
    assert!(!all.contains("not the password"));
    t.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled() {
    let mut t = TestServer::start().await;
    let c = t.client();
    for i in 0..5 {
        assert_eq!(c.login("admin", "wrong password").await.status, 401, "attempt {i}");
    }
    let r = c.login("admin", "wrong password").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "too_many_attempts");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Even the right password is refused while locked.
    let r = c.login("admin", &t.admin_password).await;
    assert_eq!(r.status, 429);
    assert!(c.cookie.lock().unwrap().is_none());
    // Other accounts from the same address are not locked (the address limit is higher).
    let r = c.login("someone-else", "wrong password").await;
    assert_eq!(r.status, 401);
    t.stop().await;
}

#[tokio::test]
async fn disabled_user_cannot_log_in_and_loses_sessions() {
    let mut t = TestServer::start().await;
    let admin = t.admin().await;
    let id = t.create_user(&admin, "dora", "agent", &[], "dora-password").await;
    let dora = t.client();
    assert_eq!(dora.login("dora", "dora-password").await.status, 200);
    assert_eq!(dora.get("/api/v1/auth/me").await.status, 200);

    let r = admin
        .send_json(
            "PATCH",
            &format!("/api/v1/admin/users/{id}"),
            &json!({"disabled": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["user"]["disabled"], true);
    assert_eq!(dora.get("/api/v1/auth/me").await.status, 401, "session ended");
    let r = dora.login("dora", "dora-password").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "invalid_credentials");

    // Re-enabled with a new password: the old one no longer works.
    let r = admin
        .send_json(
            "PATCH",
            &format!("/api/v1/admin/users/{id}"),
            &json!({"disabled": false, "password": "new-password"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(dora.login("dora", "dora-password").await.status, 401);
    assert_eq!(dora.login("dora", "new-password").await.status, 200);
    t.stop().await;
}

#[tokio::test]
async fn role_matrix_for_the_admin_api() {
    let mut t = TestServer::start().await;
    let admin = t.admin().await;
    t.create_user(&admin, "agent1", "agent", &[], "agent-password").await;
    t.create_user(&admin, "super1", "supervisor", &[], "super-password")
        .await;
    let agent = t.client();
    assert_eq!(agent.login("agent1", "agent-password").await.status, 200);
    let sup = t.client();
    assert_eq!(sup.login("super1", "super-password").await.status, 200);
    let anon = t.client();

    for path in ["/api/v1/admin/users", "/api/v1/admin/groups", "/api/v1/admin/keys"] {
        assert_eq!(admin.get(path).await.status, 200, "{path}");
        for c in [&agent, &sup] {
            let r = c.get(path).await;
            assert_eq!(r.status, 403, "{path}");
            assert_eq!(r.error_code(), "forbidden");
        }
        let r = anon.get(path).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.error_code(), "unauthenticated");
    }
    for c in [&agent, &sup] {
        assert_eq!(
            c.post_json("/api/v1/admin/groups", &json!({"name": "x"})).await.status,
            403
        );
        let r = c
            .post_json(
                "/api/v1/admin/users",
                &json!({"username": "evil", "role": "admin", "password": "12345678"}),
            )
            .await;
        assert_eq!(r.status, 403);
        assert_eq!(c.get("/api/v1/auth/me").await.status, 200);
    }
    assert_eq!(
        anon.post_json("/api/v1/admin/groups", &json!({"name": "x"}))
            .await
            .status,
        401
    );
    t.stop().await;
}

#[tokio::test]
async fn csrf_is_enforced() {
    let mut t = TestServer::start().await;
    let c = t.client();
    let body = serde_json::to_vec(&json!({"username": "admin", "password": t.admin_password})).unwrap();
    // Login without the custom header: refused before any credential check.
    let r = c
        .raw(
            "POST",
            "/api/v1/auth/login",
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "csrf");
    // A foreign Origin is refused even with the header.
    let foreign = [
        ("content-type", "application/json"),
        ("x-relaydesk-csrf", "1"),
        ("origin", "https://evil.example"),
    ];
    let r = c.raw("POST", "/api/v1/auth/login", &foreign, body.clone()).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "csrf");
    // Our own origin is fine.
    let origin = c.origin();
    let own = [
        ("content-type", "application/json"),
        ("x-relaydesk-csrf", "1"),
        ("origin", origin.as_str()),
    ];
    let r = c.raw("POST", "/api/v1/auth/login", &own, body).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Authenticated state-changing requests need the header too.
    let group = serde_json::to_vec(&json!({"name": "sales"})).unwrap();
    let r = c
        .raw(
            "POST",
            "/api/v1/admin/groups",
            &[("content-type", "application/json")],
            group.clone(),
        )
        .await;
    assert_eq!(r.error_code(), "csrf");
    let r = c
        .raw(
            "POST",
            "/api/v1/admin/groups",
            &[("content-type", "application/json"), ("x-relaydesk-csrf", "0")],
            group.clone(),
        )
        .await;
    assert_eq!(r.status, 403);
    let bad = [
        ("content-type", "application/json"),
        ("x-relaydesk-csrf", "1"),
        ("origin", "null"),
    ];
    assert_eq!(
        c.raw("POST", "/api/v1/admin/groups", &bad, group.clone()).await.status,
        403
    );
    let r = c.raw("DELETE", "/api/v1/admin/groups/sales", &[], Vec::new()).await;
    assert_eq!(r.error_code(), "csrf");
    assert_eq!(
        c.get("/api/v1/admin/groups").await.json()["groups"],
        json!([]),
        "nothing was created"
    );
    // Reads need no header.
    assert_eq!(c.get("/api/v1/auth/me").await.status, 200);
    t.stop().await;
}

/// A server and its admin's client, with the groups `sales` and `support` created through the API (names
/// are unique whatever their case).
async fn admin_with_groups() -> (TestServer, common::Client) {
    let t = TestServer::start().await;
    let a = t.admin().await;
    let r = a.post_json("/api/v1/admin/groups", &json!({"name": "sales"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        a.post_json("/api/v1/admin/groups", &json!({"name": "Sales"}))
            .await
            .error_code(),
        "conflict"
    );
    assert_eq!(
        a.post_json("/api/v1/admin/groups", &json!({"name": "support"}))
            .await
            .status,
        201
    );
    (t, a)
}

/// Every one of `actions` is in the audit log with the acting admin, and no `secret` is.
async fn assert_audited(t: &TestServer, actions: &[&str], secret: Option<&str>) {
    let audit = t.running().state().store.call(|db| db.recent_audit(100)).await.unwrap();
    for action in actions {
        assert!(
            audit
                .iter()
                .any(|e| e.action == *action && e.actor.as_deref() == Some("admin")),
            "{action}"
        );
    }
    if let Some(secret) = secret {
        assert!(!format!("{audit:?}").contains(secret));
    }
}

#[tokio::test]
async fn admin_manages_users_and_groups() {
    let (mut t, a) = admin_with_groups().await;

    // A generated password is returned once.
    let r = a
        .post_json(
            "/api/v1/admin/users",
            &json!({"username": "ann", "role": "agent", "groups": ["sales"], "display_name": "Ann A."}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    let pw = v["password"].as_str().unwrap().to_string();
    let id = v["user"]["id"].as_i64().unwrap();
    assert_eq!(v["user"]["max_conversations"], 4);
    assert_eq!(v["user"]["groups"], json!(["sales"]));
    assert_eq!(t.client().login("ann", &pw).await.status, 200);

    let r = a
        .post_json(
            "/api/v1/admin/users",
            &json!({"username": "ann", "role": "agent", "password": "12345678"}),
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (409, "conflict"));
    let r = a
        .post_json(
            "/api/v1/admin/users",
            &json!({"username": "bob", "role": "agent", "groups": ["nope"], "password": "12345678"}),
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = a
        .post_json(
            "/api/v1/admin/users",
            &json!({"username": "bob", "role": "boss", "password": "12345678"}),
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_json"));
    let r = a
        .post_json(
            "/api/v1/admin/users",
            &json!({"username": "bob", "role": "agent", "password": "short"}),
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_input"));
    let r = a
        .post_json(
            "/api/v1/admin/users",
            &json!({"username": "bob", "role": "agent", "password": "12345678", "max_conversations": 0}),
        )
        .await;
    assert_eq!(r.status, 400);

    let r = a
        .send_json(
            "PATCH",
            &format!("/api/v1/admin/users/{id}"),
            &json!({"groups": ["sales", "support"], "max_conversations": 7, "role": "supervisor"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["user"]["groups"], json!(["sales", "support"]));
    assert_eq!(r.json()["user"]["max_conversations"], 7);
    assert_eq!(
        a.get(&format!("/api/v1/admin/users/{id}")).await.json()["user"]["role"],
        "supervisor"
    );
    assert_eq!(a.get("/api/v1/admin/users/999999").await.status, 404);
    assert_eq!(
        a.get("/api/v1/admin/users").await.json()["users"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The last admin cannot be disabled.
    let admin_id = a.get("/api/v1/auth/me").await.json()["user"]["id"].as_i64().unwrap();
    let r = a
        .send_json(
            "PATCH",
            &format!("/api/v1/admin/users/{admin_id}"),
            &json!({"disabled": true}),
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (409, "conflict"));

    assert_eq!(
        a.send_json("DELETE", "/api/v1/admin/groups/support", &json!(null))
            .await
            .status,
        204
    );
    assert_eq!(
        a.get(&format!("/api/v1/admin/users/{id}")).await.json()["user"]["groups"],
        json!(["sales"])
    );

    // Every change is audited with the acting admin.
    assert_audited(
        &t,
        &["group.create", "user.create", "user.update", "group.delete"],
        Some(&pw),
    )
    .await;
    t.stop().await;
}

#[tokio::test]
async fn admin_manages_site_keys() {
    let (mut t, a) = admin_with_groups().await;
    // Site keys: origins validated and normalised.
    let r = a.post_json("/api/v1/admin/keys", &json!({"group": "sales", "origins": ["HTTPS://Shop.Example:443", "http://localhost:3000"], "label": "shop"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["key"].clone();
    let k = key["key"].as_str().unwrap().to_string();
    assert!(k.starts_with("pk_") && k.len() == 35);
    assert_eq!(key["origins"], json!(["http://localhost:3000", "https://shop.example"]));
    assert_eq!(key["group"], "sales");
    assert!(key["revoked_at"].is_null());
    for bad in [
        "https://shop.example/path",
        "ftp://shop.example",
        "shop.example",
        "https://u@shop.example",
        "https://shop.example?x",
    ] {
        let r = a
            .post_json("/api/v1/admin/keys", &json!({"group": "sales", "origins": [bad]}))
            .await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_input"), "{bad}");
    }
    let r = a
        .post_json("/api/v1/admin/keys", &json!({"group": "sales", "origins": []}))
        .await;
    assert_eq!(r.status, 400);
    let r = a
        .post_json(
            "/api/v1/admin/keys",
            &json!({"group": "nope", "origins": ["https://a.example"]}),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        a.get("/api/v1/admin/keys").await.json()["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let r = a.send_json("DELETE", "/api/v1/admin/groups/sales", &json!(null)).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (409, "conflict"),
        "group has a key"
    );
    let r = a
        .send_json("DELETE", &format!("/api/v1/admin/keys/{k}"), &json!(null))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["key"]["revoked_at"].is_i64());
    assert_eq!(
        a.send_json("DELETE", "/api/v1/admin/keys/pk_nope", &json!(null))
            .await
            .status,
        404
    );

    // Every change is audited with the acting admin.
    assert_audited(&t, &["group.create", "key.create", "key.revoke"], None).await;
    t.stop().await;
}

#[tokio::test]
async fn bad_inputs_get_json_errors_never_500() {
    let mut t = TestServer::start().await;
    let a = t.admin().await;
    let c = t.client();
    let login = "/api/v1/auth/login";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("malformed", b"{\"username\": ".to_vec(), 400, "invalid_json"),
        ("not an object", b"[1,2]".to_vec(), 400, "invalid_json"),
        (
            "wrong types",
            br#"{"username": 5, "password": true}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "missing field",
            br#"{"username": "admin"}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "unknown field",
            br#"{"username": "a", "password": "b", "admin": true}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "invalid utf-8",
            b"{\"username\": \"\xff\xfe\", \"password\": \"x\"}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "1 MB username",
            format!(r#"{{"username": "{}", "password": "x"}}"#, "u".repeat(1 << 20)).into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            "60 KB username",
            format!(r#"{{"username": "{}", "password": "x"}}"#, "u".repeat(60_000)).into_bytes(),
            401,
            "invalid_credentials",
        ),
        (
            "quotes",
            br#"{"username": "a' OR '1'='1", "password": "x\" --"}"#.to_vec(),
            401,
            "invalid_credentials",
        ),
        (
            "percent",
            br#"{"username": "%", "password": "%s%n"}"#.to_vec(),
            401,
            "invalid_credentials",
        ),
        (
            "nul",
            br#"{"username": "ad\u0000min", "password": "x"}"#.to_vec(),
            401,
            "invalid_credentials",
        ),
    ];
    for (what, body, status, code) in cases {
        let r = c.post_raw(login, body).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert_eq!(r.error_code(), code, "{what}");
    }
    let r = c
        .raw(
            "POST",
            login,
            &[("x-relaydesk-csrf", "1")],
            br#"{"username":"a","password":"b"}"#.to_vec(),
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (415, "unsupported_media_type"));

    // Odd but valid usernames work end to end.
    for name in [
        "o'brien",
        "100%",
        "\"quoted\"",
        "zoë",
        "日本語",
        "émoji😀",
        "a;DROP-TABLE-users",
    ] {
        let r = a
            .post_json(
                "/api/v1/admin/users",
                &json!({"username": name, "role": "agent", "password": "password-1"}),
            )
            .await;
        assert_eq!(r.status, 201, "{name}: {}", r.text());
        assert_eq!(r.json()["user"]["username"], name);
        let u = t.client();
        let r = u.login(name, "password-1").await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(u.get("/api/v1/auth/me").await.json()["user"]["username"], name);
    }
    for bad in ["", "has space", "tab\tname", &"x".repeat(65)] {
        let r = a
            .post_json(
                "/api/v1/admin/users",
                &json!({"username": bad, "role": "agent", "password": "password-1"}),
            )
            .await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_input"), "{bad:?}");
    }

    // Routing errors are JSON too.
    let r = c.get("/nope").await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = c.get("/api/v1/nope").await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = c.get(login).await;
    assert_eq!((r.status, r.error_code().as_str()), (405, "method_not_allowed"));
    let r = c.raw("DELETE", "/healthz", &[], Vec::new()).await;
    assert_eq!(r.status, 405);
    let r = a.get("/api/v1/admin/users/abc").await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_path"));
    let r = a.post_raw("/api/v1/admin/groups", vec![b'x'; 70_000]).await;
    assert_eq!((r.status, r.error_code().as_str()), (413, "payload_too_large"));
    let r = a
        .post_raw(
            "/api/v1/admin/groups",
            format!(r#"{{"name": "{}"}}"#, "g".repeat(60_000)).into_bytes(),
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_input"));
    // A garbage cookie is just "not logged in".
    let g = t.client();
    *g.cookie.lock().unwrap() = Some("%%%\"';".into());
    assert_eq!(g.get("/api/v1/auth/me").await.status, 401);
    // The server is still healthy.
    assert_eq!(c.get("/healthz").await.status, 200);
    t.stop().await;
}

#[tokio::test]
async fn restart_keeps_users_keys_and_certificate() {
    let mut t = TestServer::start().await;
    let fingerprint = t.running().fingerprint().to_string();
    let a = t.admin().await;
    assert_eq!(
        a.post_json("/api/v1/admin/groups", &json!({"name": "sales"}))
            .await
            .status,
        201
    );
    t.create_user(&a, "keeper", "agent", &["sales"], "keeper-password")
        .await;
    let key = a
        .post_json(
            "/api/v1/admin/keys",
            &json!({"group": "sales", "origins": ["https://shop.example"]}),
        )
        .await
        .json()["key"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let session = a.cookie.lock().unwrap().clone();

    t.restart().await;
    assert_eq!(
        t.running().fingerprint(),
        fingerprint,
        "the generated certificate is reused"
    );
    // Sessions survive a restart (they live in the database).
    let a2 = t.client();
    *a2.cookie.lock().unwrap() = session;
    assert_eq!(a2.get("/api/v1/auth/me").await.status, 200);
    let keys = a2.get("/api/v1/admin/keys").await.json();
    assert_eq!(keys["keys"][0]["key"], key.as_str());
    assert_eq!(keys["keys"][0]["origins"], json!(["https://shop.example"]));
    let u = t.client();
    let r = u.login("keeper", "keeper-password").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["user"]["groups"], json!(["sales"]));
    assert_eq!(
        t.admin().await.get("/api/v1/auth/me").await.status,
        200,
        "same admin password"
    );
    t.stop().await;
}

#[tokio::test]
async fn shutdown_is_bounded_with_open_connections() {
    let mut t = TestServer::start().await;
    // An idle TCP connection that never completes its TLS handshake, and one idle TLS connection.
    let _raw = tokio::net::TcpStream::connect(t.addr()).await.unwrap();
    let c = t.client();
    assert_eq!(c.get("/healthz").await.status, 200);
    let addr = t.addr();
    t.stop().await; // asserts completion within IO_TIMEOUT
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn concurrent_logins_all_succeed() {
    let mut t = TestServer::start().await;
    let admin = t.admin().await;
    for i in 0..4 {
        t.create_user(&admin, &format!("user{i}"), "agent", &[], "same-password")
            .await;
    }
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = t.client();
        tasks.push(tokio::spawn(async move {
            let r = c.login(&format!("user{}", i % 4), "same-password").await;
            (r.status, c.get("/api/v1/auth/me").await.status)
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), (200, 200));
    }
    t.stop().await;
}

#[tokio::test]
async fn configured_public_origin_is_the_only_accepted_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = common::test_config(tmp.path());
    config.public_origin = Some("https://Desk.Example:443".into());
    let server = relaydesk_signalling::Server::start(config).await.unwrap();
    let c = common::Client::new(server.local_addr(), server.cert_path());
    let body = serde_json::to_vec(&json!({"username": "x", "password": "y"})).unwrap();
    let with_origin = |o: &'static str| {
        [
            ("content-type", "application/json"),
            ("x-relaydesk-csrf", "1"),
            ("origin", o),
        ]
    };
    let r = c
        .raw(
            "POST",
            "/api/v1/auth/login",
            &with_origin("https://desk.example"),
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 401, "origin accepted, credentials checked: {}", r.text());
    let own = c.origin();
    let headers = [
        ("content-type", "application/json"),
        ("x-relaydesk-csrf", "1"),
        ("origin", own.as_str()),
    ];
    let r = c.raw("POST", "/api/v1/auth/login", &headers, body.clone()).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "csrf"),
        "the Host-derived origin no longer counts"
    );
    let r = c
        .raw("POST", "/api/v1/auth/login", &with_origin("http://desk.example"), body)
        .await;
    assert_eq!(r.status, 403, "scheme matters");
    tokio::time::timeout(common::IO_TIMEOUT, server.shutdown())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn slow_body_gets_408() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tmp = tempfile::tempdir().unwrap();
    let mut config = common::test_config(tmp.path());
    config.http.request_timeout_secs = 1;
    let server = relaydesk_signalling::Server::start(config).await.unwrap();
    let c = common::Client::new(server.local_addr(), server.cert_path());
    let mut tls = c.connect_tls().await;
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         x-relaydesk-csrf: 1\r\ncontent-length: 100\r\n\r\n{{\"username\"",
        server.local_addr()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    // The rest of the body never comes; the server answers by itself and closes.
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(common::IO_TIMEOUT, tls.read_to_end(&mut buf))
        .await
        .expect("server answered");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"request_timeout""#), "{text}");
    tokio::time::timeout(common::IO_TIMEOUT, server.shutdown())
        .await
        .unwrap()
        .unwrap();
}

/// Every response, success or error, page or API, carries HSTS and `nosniff`; the session cookie has the
/// `__Host-` prefix and the attributes that prefix demands (Secure, `Path=/`, no `Domain`).
#[tokio::test]
async fn every_response_carries_hsts_and_nosniff_and_the_cookie_is_host_only() {
    let t = TestServer::start().await;
    let c = t.client();
    let r = c.login("admin", &t.admin_password).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with("__Host-relaydesk_session="), "{cookie}");
    assert!(cookie.contains("Secure") && cookie.contains("Path=/"), "{cookie}");
    assert!(!cookie.to_ascii_lowercase().contains("domain="), "{cookie}");
    let mut seen = vec![r];
    for path in [
        "/healthz",
        "/metrics",
        "/api/v1/auth/me",
        "/api/v1/admin/conversations/1/transcript",
        "/api/v1/no-such-route",
        "/agent",
        "/widget.js",
    ] {
        seen.push(c.get(path).await);
    }
    seen.push(t.client().get("/api/v1/auth/me").await);
    for r in &seen {
        assert_eq!(
            r.header("strict-transport-security").as_deref(),
            Some("max-age=31536000"),
            "{} {:?}",
            r.status,
            r.headers
        );
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{:?}",
            r.headers
        );
    }
}
