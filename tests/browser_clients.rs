//! End-to-end tests of the browser clients in real Chromium (headless, driven by chromedriver): the admin
//! pages, the customer widget on a host page of another origin, and the agent console.
//! Screenshots of these runs go to `docs/screenshots/` (shown in the README).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use browser::{Browser, HostPage, screenshot_path, site_key};
use common::TestServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_a_strict_csp_and_the_widget_frame_only_allows_the_keys_origins() {
    let ts = TestServer::start().await;
    let admin = ts.admin().await;
    let key = site_key(&admin, "sales", &["https://shop.example", "http://127.0.0.1:8081"]).await;
    let c = ts.client();
    for page in ["/agent", "/admin"] {
        let r = c.get(page).await;
        assert_eq!(r.status, 200);
        let csp = r.header("content-security-policy").unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            r.text().contains("<script type=\"module\" src=\"/assets/"),
            "no inline script"
        );
        assert!(
            !r.text().contains("<script>") && !r.text().contains("style=\""),
            "no inline script or style"
        );
    }
    let r = c.get(&format!("/widget/frame?key={key}")).await;
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.ends_with("frame-ancestors http://127.0.0.1:8081 https://shop.example"),
        "{csp}"
    );
    // Unknown and revoked keys: nobody may frame it.
    let r = c.get("/widget/frame?key=pk_00000000000000000000000000000000").await;
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .ends_with("frame-ancestors 'none'")
    );
    let r = admin
        .send_json("DELETE", &format!("/api/v1/admin/keys/{key}"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.get(&format!("/widget/frame?key={key}")).await;
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .ends_with("frame-ancestors 'none'")
    );
    let r = c.get("/widget.js").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/javascript"));
    assert_eq!(c.get("/assets/nope.js").await.status, 404);
    // The widget frame's socket route serves only pages of the server's own origin.
    let own = c.origin();
    let r = c
        .raw(
            "GET",
            "/widget/ws?host=https://shop.example",
            &[("origin", "https://shop.example")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = c
        .raw("GET", "/widget/ws?host=https://shop.example", &[], Vec::new())
        .await;
    assert_eq!(r.status, 403, "no Origin: refused, {}", r.text());
    let r = c
        .raw("GET", "/widget/ws?host=nope", &[("origin", own.as_str())], Vec::new())
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // From the frame's origin, it is the visitor socket (which wants a WebSocket upgrade).
    let r = c
        .raw(
            "GET",
            "/widget/ws?host=https://shop.example&token=abc",
            &[("origin", own.as_str())],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 426, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_pages_create_a_group_and_a_site_key_in_chromium() {
    let ts = TestServer::start().await;
    let origin = format!("https://{}", ts.addr());
    let b = Browser::start().await;
    b.capture_websockets().await;
    b.goto(&format!("{origin}/admin")).await;
    let user = b.find("#username").await;
    b.type_text(&user, "admin").await;
    b.type_text(&b.find("#password").await, &ts.admin_password).await;
    b.click(&b.find("#login button[type=submit]").await).await;
    b.wait_for(
        "the admin tables",
        "return !document.getElementById('admin').hidden && document.querySelector('#users tr[data-user=admin]')",
    )
    .await;

    b.type_text(&b.find("#g-name").await, "support").await;
    b.click(&b.find("#group-form button").await).await;
    b.wait_for(
        "the new group",
        "return document.querySelector('#groups tr[data-group=support]')",
    )
    .await;

    b.type_text(
        &b.find("#k-origins").await,
        "https://shop.example\nhttp://localhost:3000",
    )
    .await;
    b.type_text(&b.find("#k-label").await, "web shop").await;
    b.click(&b.find("#key-form button").await).await;
    let origins = b
        .wait_for(
            "the new key",
            "const r = document.querySelector('#keys tr[data-key]'); return r && r.children[2].textContent",
        )
        .await;
    assert_eq!(origins, json!("http://localhost:3000 https://shop.example"));

    b.type_text(&b.find("#u-name").await, "alice").await;
    b.type_text(&b.find("#u-display").await, "Alice Agent").await;
    b.type_text(&b.find("#u-groups").await, "support").await;
    b.click(&b.find("#user-form button").await).await;
    let notice = b
        .wait_for(
            "the generated password",
            "const n = document.getElementById('notice').textContent; return n.includes('shown once') && n",
        )
        .await;
    assert!(notice.as_str().unwrap().contains("alice"));

    // The server agrees with what the page shows.
    let admin = ts.admin().await;
    let keys = admin.get("/api/v1/admin/keys").await.json();
    assert_eq!(keys["keys"][0]["group"], "support");
    assert_eq!(keys["keys"][0]["label"], "web shop");
    let users = admin.get("/api/v1/admin/users").await.json();
    assert!(
        users["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["username"] == "alice" && u["groups"] == json!(["support"]))
    );
    // No CSP violation on the page.
    assert_eq!(b.exec("return window.__rdCsp", json!([])).await, json!([]));
    b.exec("window.scrollTo(0, 0)", json!([])).await;
    b.screenshot(&screenshot_path("admin.png")).await;
    b.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_on_a_foreign_origin_shows_the_error_and_opens_no_socket() {
    let ts = TestServer::start().await;
    let admin = ts.admin().await;
    let key = site_key(&admin, "sales", &["https://shop.example"]).await;
    let server = format!("https://{}", ts.addr());
    let host = HostPage::start(&format!("{server}/widget.js")).await;
    let b = Browser::start().await;
    b.window_size(1000, 760).await;
    b.capture_websockets().await;
    b.goto(&host.url(&key)).await;
    let launcher = b.find("#relaydesk-launcher").await;
    assert_eq!(
        b.exec(
            "return document.getElementById('relaydesk-launcher').getAttribute('aria-label')",
            json!([])
        )
        .await,
        json!("Open chat with customer support")
    );
    // Keyboard only: Enter on the launcher opens the panel.
    b.type_text(&launcher, "\u{E007}").await;
    let msg = b
        .wait_for(
            "the error message",
            "const e = document.getElementById('relaydesk-error'); return e && e.offsetParent && e.textContent",
        )
        .await;
    assert_eq!(msg, json!("Chat is not available on this website."));
    assert_eq!(b.exec("return RelayDesk.state.state", json!([])).await, json!("error"));
    // No frame was created, so nothing of RelayDesk runs on this page; and no socket was opened.
    assert_eq!(
        b.exec("return document.getElementById('relaydesk-frame')", json!([]))
            .await,
        json!(null)
    );
    assert_eq!(b.exec("return window.__rdSockets", json!([])).await, json!(0));
    b.screenshot(&screenshot_path("widget-not-allowed.png")).await;
    // The panel's close button has the focus; Enter closes the panel and gives the focus back to the launcher.
    assert_eq!(
        b.exec("return document.activeElement.getAttribute('aria-label')", json!([]))
            .await,
        json!("Close chat")
    );
    let close = b.find("#relaydesk-panel button[aria-label='Close chat']").await;
    b.type_text(&close, "\u{E007}").await;
    b.wait_for(
        "the panel to close",
        "return document.getElementById('relaydesk-panel').style.display === 'none' \
         && document.activeElement.id === 'relaydesk-launcher' \
         && document.activeElement.getAttribute('aria-expanded') === 'false'",
    )
    .await;
    b.quit().await;
}
