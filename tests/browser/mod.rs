//! Browser end-to-end helpers: a small W3C WebDriver client for `chromedriver` (the Debian package that
//! matches the installed `chromium` exactly, so the driver is pinned by the system package), a host-page
//! HTTP server on a second origin, and polling helpers with bounded timeouts.
//!
//! Chromium runs headless with the flags of ARCHITECTURE.md and a fresh profile directory per browser.
//! A missing `chromium` or `chromedriver` fails the test with a clear message: it is never skipped
//! (`cargo xtask test` installs both).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::http::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::common::netns::Ns;
use relaydesk::media::SfuMedia;
use relaydesk_signalling::RunningServer;

/// Upper bound for any single browser condition.
pub const WAIT: Duration = Duration::from_secs(20);

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where chromium and chromedriver are expected (Debian packages `chromium`, `chromium-driver`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A running chromedriver with one browser session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
    /// The network namespace chromedriver and Chromium run in (`None`: this process's own).
    netns: Option<Ns>,
}

/// A reference to an element of the current frame.
#[derive(Clone, Debug)]
pub struct Element(String);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    pub async fn start() -> Browser {
        Self::start_in(None).await
    }

    /// Starts chromedriver and a headless Chromium with a fresh profile inside network namespace `netns`
    /// (tests/common/netns.rs): its `127.0.0.1` is that namespace's loopback, and what it reaches is what the
    /// namespace reaches. The driver is spoken to through sockets made inside the namespace.
    pub async fn start_in(netns: Option<&Ns>) -> Browser {
        Self::start_with(netns, &[]).await
    }

    /// As [`Browser::start_in`], with more Chromium flags.
    pub async fn start_with(netns: Option<&Ns>, extra_args: &[&str]) -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run `cargo xtask test` (it installs the Debian packages chromium and chromium-driver)"
            );
        }
        // A port free where the driver runs.
        let port = match netns {
            Some(ns) => ns.run(free_port),
            None => free_port(),
        };
        let mut driver = match netns {
            Some(ns) => ns.command(CHROMEDRIVER),
            None => Command::new(CHROMEDRIVER),
        };
        let driver = driver
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
            netns: netns.cloned(),
        };
        // Wait until the driver answers /status (bounded).
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(v) = b.request("GET", "/status", None).await
                && v["value"]["ready"] == json!(true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args = json!([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--use-fake-ui-for-media-stream",
            // getDisplayMedia picks the whole (virtual) screen without a picker.
            "--auto-select-desktop-capture-source=Entire screen",
            "--use-fake-device-for-media-stream",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--allow-loopback-in-peer-connection",
            "--ignore-certificate-errors",
            "--disable-dev-shm-usage",
            "--window-size=1280,860",
            format!("--user-data-dir={}", b._profile.path().display()),
        ]);
        if let Some(a) = args.as_array_mut() {
            a.extend(extra_args.iter().map(|x| json!(x)));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let v = b
            .request("POST", "/session", Some(caps))
            .await
            .expect("new WebDriver session");
        b.session = v["value"]["sessionId"].as_str().expect("session id").to_string();
        b
    }

    /// A TCP connection to chromedriver, made in its namespace.
    async fn connect_driver(&self) -> std::io::Result<tokio::net::TcpStream> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        match &self.netns {
            None => tokio::net::TcpStream::connect(addr).await,
            Some(ns) => {
                let ns = ns.clone();
                let tcp = tokio::task::spawn_blocking(move || {
                    ns.run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
                })
                .await
                .map_err(std::io::Error::other)??;
                tcp.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(tcp)
            }
        }
    }

    async fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let fut = async {
            let tcp = self.connect_driver().await.map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", format!("127.0.0.1:{}", self.port))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 64 * 1024 * 1024)
                .await
                .map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(v)
            } else {
                Err(format!("{status}: {}", v["value"]))
            }
        };
        tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .unwrap_or_else(|_| Err(format!("WebDriver {method} {path} timed out")))
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        match self.request(method, &p, body).await {
            Ok(v) => v["value"].clone(),
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    /// Navigates the top-level page.
    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).await;
    }

    /// Runs a synchronous script in the current frame and returns its value.
    pub async fn exec(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
            .await
    }

    /// Runs a script whose last argument is a callback (`arguments[arguments.length - 1]`).
    pub async fn exec_async(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/async", Some(json!({"script": script, "args": args})))
            .await
    }

    /// Waits (bounded) until `script` (a function body) returns a truthy value; returns that value.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.exec(script, json!([])).await;
            let truthy = !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0));
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let body = self
                    .exec("return document.body ? document.body.innerText : ''", json!([]))
                    .await;
                panic!(
                    "timed out waiting for {what}; page text:\n{body}\nconsole:\n{}",
                    self.console_log().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The browser's console messages since the last call (all frames), one per line.
    pub async fn console_log(&self) -> String {
        let p = format!("/session/{}/se/log", self.session);
        match self.request("POST", &p, Some(json!({"type": "browser"}))).await {
            Ok(v) => v["value"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e["message"].as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default(),
            Err(e) => format!("(no console log: {e})"),
        }
    }

    /// The first element matching a CSS selector in the current frame (waits for it, bounded).
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            let p = format!("/session/{}/element", self.session);
            if let Ok(v) = self
                .request("POST", &p, Some(json!({"using": "css selector", "value": css})))
                .await
                && let Some(id) = v["value"][ELEMENT_KEY].as_str()
            {
                return Element(id.to_string());
            }
            assert!(Instant::now() < deadline, "no element matches {css}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks an element (a real pointer click through the driver).
    pub async fn click(&self, e: &Element) {
        self.cmd("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await;
    }

    /// Types text into an element (real key events through the driver).
    pub async fn type_text(&self, e: &Element, text: &str) {
        self.cmd("POST", &format!("/element/{}/value", e.0), Some(json!({"text": text})))
            .await;
    }

    /// Switches into an iframe element, or back to the top-level page with `None`.
    pub async fn frame(&self, e: Option<&Element>) {
        let id = match e {
            Some(e) => json!({ELEMENT_KEY: e.0}),
            None => Value::Null,
        };
        self.cmd("POST", "/frame", Some(json!({"id": id}))).await;
    }

    /// Sets the window's size.
    pub async fn window_size(&self, width: u32, height: u32) {
        self.cmd("POST", "/window/rect", Some(json!({"width": width, "height": height})))
            .await;
    }

    /// A Chrome DevTools Protocol command through chromedriver.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd("POST", "/goog/cdp/execute", Some(json!({"cmd": cmd, "params": params})))
            .await
    }

    /// Installs a WebSocket wrapper in every new document of the top-level page (not in cross-origin
    /// frames): `window.__rdSockets` counts sockets opened, `window.__rdFrames` holds every text frame received.
    pub async fn capture_websockets(&self) {
        let src = r#"(() => {
            const Orig = window.WebSocket;
            window.__rdSockets = 0; window.__rdFrames = []; window.__rdCsp = [];
            document.addEventListener('securitypolicyviolation', (e) => window.__rdCsp.push(e.violatedDirective + ' ' + e.blockedURI));
            window.WebSocket = class extends Orig {
                constructor(...a) { super(...a); window.__rdSockets += 1;
                    this.addEventListener('message', (e) => window.__rdFrames.push(String(e.data))); }
            };
        })();"#;
        self.cdp("Page.addScriptToEvaluateOnNewDocument", json!({"source": src}))
            .await;
    }

    /// Saves a PNG screenshot of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", "/screenshot", None).await;
        let png = base64_decode(v.as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Ends the session (closing the browser) and the driver.
    pub async fn quit(mut self) {
        let p = format!("/session/{}", self.session);
        let _ = self.request("DELETE", &p, None).await;
        self.session.clear();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a failed assertion (no quit()): close the browser through the driver first, synchronously and
        // bounded, so that no Chromium outlives the test; then stop the driver.
        if !self.session.is_empty() {
            use std::io::{Read, Write};
            let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
            let connect = move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2));
            let tcp = match &self.netns {
                None => connect(),
                // The namespace may be gone already (its pair dropped first): then so is the driver.
                Some(ns) => ns.try_run(connect).unwrap_or_else(|e| Err(std::io::Error::other(e))),
            };
            if let Ok(mut s) = tcp {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let req = format!(
                    "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.session, self.port
                );
                if s.write_all(req.as_bytes()).is_ok() {
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink);
                }
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with padding) to bytes.
pub fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    }
    let bytes: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace() && *b != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// A host page on another origin (`http://127.0.0.1:PORT`) that embeds the widget: `/?key=pk_…` serves a
/// shop page that loads `widget_src` with that site key.
pub struct HostPage {
    pub origin: String,
    task: tokio::task::JoinHandle<()>,
}

impl HostPage {
    /// Starts the host-page server.
    pub async fn start(widget_src: &str) -> HostPage {
        Self::start_in(None, widget_src).await
    }

    /// Starts the host-page server on the loopback of network namespace `netns` (for a browser started there).
    pub async fn start_in(netns: Option<&Ns>, widget_src: &str) -> HostPage {
        let listener = match netns {
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Some(ns) => {
                let l = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
                l.set_nonblocking(true).unwrap();
                tokio::net::TcpListener::from_std(l).unwrap()
            }
        };
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let widget_src = widget_src.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let widget_src = widget_src.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 8192];
                    let mut got = 0;
                    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") && got < buf.len() {
                        match sock.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..got]);
                    let key: String = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|path| path.split_once("key="))
                        .map(|(_, k)| {
                            k.chars()
                                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                                .collect()
                        })
                        .unwrap_or_default();
                    let html = format!(
                        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Example shop</title>\
                         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head>\
                         <body style=\"font-family:sans-serif;background:#fafafa;margin:24px\"><h1>Example shop</h1>\
                         <p>A page of another website that embeds the RelayDesk widget.</p>\
                         <script src=\"{widget_src}\" data-site-key=\"{key}\" async></script></body></html>"
                    );
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{html}",
                        html.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        HostPage { origin, task }
    }

    /// The page's URL for a site key.
    pub fn url(&self, key: &str) -> String {
        format!("{}/?key={key}", self.origin)
    }
}

impl Drop for HostPage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a test saves screenshot `NAME`: `target/screenshots/NAME`, or `docs/screenshots/NAME` (the README's
/// pictures) when `RELAYDESK_UPDATE_SCREENSHOTS=1`, so that an ordinary test run leaves the work tree clean.
pub fn screenshot_path(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = if std::env::var_os("RELAYDESK_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        root.join("docs/screenshots")
    } else {
        root.join("target/screenshots")
    };
    dir.join(name)
}

/// Creates `group` and a site key for it allowing `origins`; returns the key.
pub async fn site_key(admin: &crate::common::Client, group: &str, origins: &[&str]) -> String {
    let r = admin
        .post_json("/api/v1/admin/groups", &serde_json::json!({"name": group}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin
        .post_json(
            "/api/v1/admin/keys",
            &serde_json::json!({"group": group, "origins": origins, "label": "test"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["key"]["key"].as_str().unwrap().to_string()
}

/// Creates a user through the admin API; the password is `<username>-password`.
pub async fn add_user(admin: &crate::common::Client, username: &str, display_name: &str, role: &str, group: &str) {
    let r = admin
        .post_json(
            "/api/v1/admin/users",
            &serde_json::json!({"username": username, "display_name": display_name, "role": role,
                                "groups": [group], "password": format!("{username}-password")}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

/// Logs into the agent console at `origin` and waits for the agent socket's `welcome`.
pub async fn console_login(b: &Browser, origin: &str, user: &str, password: &str) {
    b.goto(&format!("{origin}/agent")).await;
    b.type_text(&b.find("#username").await, user).await;
    b.type_text(&b.find("#password").await, password).await;
    b.click(&b.find("#login button[type=submit]").await).await;
    b.wait_for(
        "the agent socket's welcome",
        "return document.getElementById('conn').textContent === 'Connected.'",
    )
    .await;
}

/// Inbound video frames decoded and audio packets received by a page's call (`pc` is the script that finds
/// the RTCPeerConnection), the number of inbound video streams decoding and audio streams receiving, those
/// counters per inbound stream (`frames`, `packets`: by stats id), and the number of transceivers; or null
/// when there is no call.
pub const STATS: &str = r#"
const done = arguments[arguments.length - 1];
const pc = (PC);
if (!pc) { done(null); return; }
pc.getStats().then((r) => {
  let video = 0, audio = 0, videos = 0, audios = 0;
  const frames = {}, packets = {};
  r.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') { video = Math.max(video, s.framesDecoded || 0); if (s.framesDecoded > 0) videos += 1; frames[s.id] = s.framesDecoded || 0; }
    if (s.type === 'inbound-rtp' && s.kind === 'audio') { audio = Math.max(audio, s.packetsReceived || 0); if (s.packetsReceived > 0) audios += 1; packets[s.id] = s.packetsReceived || 0; }
  });
  done({ video, audio, videos, audios, frames, packets, transceivers: pc.getTransceivers().length, state: pc.connectionState });
}, (e) => done({ error: String(e) }));
"#;

/// Frames a video stream, and packets an audio stream, must gain after the first reading for `wait_streams` to
/// count it as flowing: a stream frozen after its first frames (a single `> 0` reading would pass it) fails.
const VIDEO_PROGRESS: u64 = 10;
const AUDIO_PROGRESS: u64 = 25;

/// Inbound streams of `now[key]` whose counter grew by at least `by` over `first[key]` (a stream first seen
/// after the first reading counts from zero).
fn progressed(first: &Value, now: &Value, key: &str, by: u64) -> u64 {
    let Some(streams) = now[key].as_object() else {
        return 0;
    };
    streams
        .iter()
        .filter(|(id, n)| n.as_u64().unwrap_or(0) >= first[key][id.as_str()].as_u64().unwrap_or(0) + by)
        .count() as u64
}

/// Waits (bounded) until the page's call decodes `videos` video streams and receives `audios` audio streams,
/// each progressing: its frames decoded (packets received) grow by [`VIDEO_PROGRESS`] ([`AUDIO_PROGRESS`])
/// after a first reading that already counts the streams as live.
pub async fn wait_streams(b: &Browser, who: &str, pc: &str, videos: u64, audios: u64) -> Value {
    let script = STATS.replace("(PC)", pc);
    let deadline = Instant::now() + WAIT;
    let mut first: Option<Value> = None;
    loop {
        let v = b.exec_async(&script, json!([])).await;
        let live = v["videos"].as_u64().unwrap_or(0) >= videos && v["audios"].as_u64().unwrap_or(0) >= audios;
        match &first {
            None if live => first = Some(v.clone()),
            Some(f)
                if progressed(f, &v, "frames", VIDEO_PROGRESS) >= videos
                    && progressed(f, &v, "packets", AUDIO_PROGRESS) >= audios =>
            {
                return v;
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{who}: not {videos} videos and {audios} voices progressing within {WAIT:?}: first {} now {v}",
            first.as_ref().unwrap_or(&Value::Null)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server with the real SFU on loopback, its admin, a host page, group `sales` with agent Alice (available,
/// logged into a console) and a visitor whose conversation Alice accepted; the visitor's browser has the
/// widget's frame selected.
pub struct CallSite {
    pub server: RunningServer,
    pub sfu: std::sync::Arc<SfuMedia>,
    pub admin: crate::common::Client,
    /// `https://127.0.0.1:PORT`.
    pub origin: String,
    pub host: HostPage,
    pub agent: Browser,
    pub visitor: Browser,
    /// The conversation's id.
    pub conv: String,
    pub tmp: tempfile::TempDir,
}

impl CallSite {
    pub async fn start() -> CallSite {
        let s = CallServer::start().await;
        let key = site_key(&s.admin, "sales", &[&s.host.origin]).await;
        add_user(&s.admin, "alice", "Alice", "agent", "sales").await;

        // Agent available, visitor connected and accepted.
        let agent = Browser::start().await;
        console_login(&agent, &s.origin, "alice", "alice-password").await;
        agent
            .click(&agent.find("#presence option[value=available]").await)
            .await;
        let visitor = Browser::start().await;
        let conv = s.accept(&agent, &visitor, &key, "Alice").await;
        let CallServer {
            sfu,
            server,
            admin,
            origin,
            host,
            tmp,
        } = s;
        CallSite {
            server,
            sfu,
            admin,
            origin,
            host,
            agent,
            visitor,
            conv,
            tmp,
        }
    }

    /// The script that finds the agent's RTCPeerConnection of the conversation.
    pub fn agent_pc(&self) -> String {
        let conv = &self.conv;
        format!("window.relaydeskCalls && window.relaydeskCalls['{conv}'] && window.relaydeskCalls['{conv}'].pc")
    }

    /// Closes both browsers, the server and the SFU.
    pub async fn stop(self) {
        self.visitor.quit().await;
        self.agent.quit().await;
        self.server.shutdown().await.unwrap();
        self.sfu.shutdown(Duration::from_secs(5)).unwrap();
    }
}

/// The script that finds the visitor's RTCPeerConnection.
pub const VISITOR_PC: &str = "window.relaydeskCall && window.relaydeskCall.pc";

impl Browser {
    /// Presses keys on whatever has the focus (W3C actions: real key events, no element is focused first).
    /// `keys` are WebDriver key codes: `\u{E004}` Tab, `\u{E007}` Enter, `\u{E00D}` Space.
    pub async fn press_keys(&self, keys: &str) {
        let mut actions = Vec::new();
        for k in keys.chars() {
            actions.push(json!({"type": "keyDown", "value": k.to_string()}));
            actions.push(json!({"type": "keyUp", "value": k.to_string()}));
        }
        self.cmd(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await;
    }

    /// Presses Tab (at most 30 times) until the focused element matches `css`; panics if it never does.
    pub async fn tab_to(&self, css: &str) {
        self.keys_to(css, false).await;
    }

    /// Presses Shift+Tab (at most 30 times) until the focused element matches `css`; panics if it never does.
    pub async fn shift_tab_to(&self, css: &str) {
        self.keys_to(css, true).await;
    }

    async fn keys_to(&self, css: &str, back: bool) {
        let check = format!("return !!document.activeElement && document.activeElement.matches({css:?})");
        let mut actions = vec![
            json!({"type": "keyDown", "value": "\u{E004}"}),
            json!({"type": "keyUp", "value": "\u{E004}"}),
        ];
        if back {
            actions.insert(0, json!({"type": "keyDown", "value": "\u{E008}"}));
            actions.push(json!({"type": "keyUp", "value": "\u{E008}"}));
        }
        let press = json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]});
        for _ in 0..30 {
            if self.exec(&check, json!([])).await == json!(true) {
                return;
            }
            self.cmd("POST", "/actions", Some(press.clone())).await;
        }
        panic!("{css} is not reachable with the keyboard (Tab, shift: {back})");
    }
}

/// A server with the real SFU on loopback (one shard), its generated admin logged in, and a host page
/// serving the widget: what a browser call test starts from.
pub struct CallServer {
    pub sfu: std::sync::Arc<relaydesk::media::SfuMedia>,
    pub server: relaydesk_signalling::server::RunningServer,
    pub admin: crate::common::Client,
    /// `https://127.0.0.1:PORT` of the server.
    pub origin: String,
    pub host: HostPage,
    /// The data directory.
    pub tmp: tempfile::TempDir,
}

impl CallServer {
    pub async fn start() -> CallServer {
        use relaydesk_signalling::live::{LiveParts, MediaWiring};
        let driver = relaydesk_sfu::DriverConfig::new(std::net::Ipv4Addr::LOCALHOST.into(), 1);
        let (sfu, events) =
            relaydesk::media::SfuMedia::start(&driver, &relaydesk_signalling::masking::Masker::default(), false)
                .unwrap();
        let parts = LiveParts {
            media: Some(MediaWiring {
                control: sfu.clone(),
                events,
            }),
            sink: None,
        };
        let tmp = tempfile::tempdir().unwrap();
        let server = relaydesk_signalling::Server::start_with(
            crate::common::test_config(tmp.path()),
            relaydesk_signalling::StartOptions::default().live(parts),
        )
        .await
        .unwrap();
        let password = match server.admin_bootstrap() {
            Some(relaydesk_signalling::server::AdminBootstrap::Generated(p)) => p.clone(),
            other => panic!("expected a generated admin password, got {other:?}"),
        };
        let admin = crate::common::Client::new(server.local_addr(), &tmp.path().join("tls/cert.pem"));
        assert_eq!(admin.login("admin", &password).await.status, 200);
        let origin = format!("https://{}", server.local_addr());
        let host = HostPage::start(&format!("{origin}/widget.js")).await;
        CallServer {
            sfu,
            server,
            admin,
            origin,
            host,
            tmp,
        }
    }

    /// The visitor opens the widget with `key`, the (available) agent accepts: returns the conversation id,
    /// with the visitor's driver switched into the widget's frame once it says it is chatting with `agent_name`.
    pub async fn accept(&self, agent: &Browser, visitor: &Browser, key: &str, agent_name: &str) -> String {
        visitor.goto(&self.host.url(key)).await;
        visitor.click(&visitor.find("#relaydesk-launcher").await).await;
        agent.click(&agent.find("#offers li.offer button.accept").await).await;
        let conv = agent
            .wait_for(
                "the conversation",
                "const p = document.querySelector('.pane:not([hidden])'); return p && p.dataset.conversation",
            )
            .await;
        visitor.frame(Some(&visitor.find("#relaydesk-frame").await)).await;
        visitor
            .wait_for(
                "the agent's name",
                &format!("return document.getElementById('status').textContent === 'Chatting with {agent_name}'"),
            )
            .await;
        conv.as_str().unwrap().to_string()
    }

    /// Stops the server and the SFU; the data directory is kept (returned) for what the test reads after.
    pub async fn shutdown(self) -> tempfile::TempDir {
        self.server.shutdown().await.unwrap();
        self.sfu.shutdown(Duration::from_secs(5)).unwrap();
        self.tmp
    }
}
