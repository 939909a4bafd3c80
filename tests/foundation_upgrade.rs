//! Foundation: HTTP upgrades (WebSocket) work through the TLS listener, for routes added with
//! `Server::start_with`, and shutdown stays bounded while an upgraded connection is open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use hyper::http::Request;
use hyper_util::rt::TokioIo;
use relaydesk_signalling::http::SharedState;
use relaydesk_signalling::{Server, StartOptions};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

/// Echoes text frames until the client leaves or the server shuts down; then reports on `done`.
async fn echo(
    State(state): State<SharedState>,
    Extension(done): Extension<mpsc::UnboundedSender<&'static str>>,
    ws: WebSocketUpgrade,
) -> axum::response::Response {
    ws.on_upgrade(move |mut socket: WebSocket| async move {
        let stopped = state.shutdown.stopped();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => {
                    let _ = socket.send(Message::Close(None)).await;
                    let _ = done.send("shutdown");
                    return;
                }
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if socket.send(Message::Text(t)).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
        let _ = done.send("client left");
    })
}

async fn panicking() -> &'static str {
    panic!("deliberate test panic")
}

#[tokio::test]
async fn websocket_upgrade_over_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = common::test_config(tmp.path());
    config.http.shutdown_grace_secs = 1;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let options = StartOptions::default().routes(move |_state| {
        axum::Router::new()
            .route("/test/ws", get(echo))
            .route("/test/panic", get(panicking))
            .layer(Extension(done_tx))
    });
    let server = Server::start_with(config, options).await.unwrap();
    let addr = server.local_addr();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(server.cert_path()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/test/ws")
        .header("host", addr.to_string())
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());

    // One masked client text frame "hello", then read the server's unmasked echo.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    io.write_all(&frame).await.unwrap();
    let mut head = [0u8; 2];
    tokio::time::timeout(common::IO_TIMEOUT, io.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head, [0x81, 5]);
    let mut payload = [0u8; 5];
    tokio::time::timeout(common::IO_TIMEOUT, io.read_exact(&mut payload))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&payload, b"hello");

    // Unknown routes still give JSON 404 with extra routes merged.
    let c = common::Client::new(addr, server.cert_path());
    assert_eq!(c.get("/test/nope").await.error_code(), "not_found");
    // A panicking handler gives a JSON 500, and the server keeps serving.
    let r = c.get("/test/panic").await;
    assert_eq!((r.status, r.error_code().as_str()), (500, "internal"));
    assert_eq!(c.get("/healthz").await.status, 200);

    // Shutdown with the WebSocket still open: the session sees the signal, sends a close frame and ends.
    tokio::time::timeout(common::IO_TIMEOUT, server.shutdown())
        .await
        .unwrap()
        .unwrap();
    let why = tokio::time::timeout(common::IO_TIMEOUT, done_rx.recv()).await.unwrap();
    assert_eq!(why, Some("shutdown"));
    let mut close = [0u8; 2];
    tokio::time::timeout(common::IO_TIMEOUT, io.read_exact(&mut close))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(close[0], 0x88, "close frame");
}
