//! What a connection on the public port (or the dedicated ICE-TCP port) is: its first bytes are read and
//! classified, refusals are counted, and an ICE-TCP connection is handed to the media side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::live::SharedLive;
use crate::shutdown::{ShutdownHandle, stopped};

/// What a connection turned out to be.
#[derive(Debug)]
pub(super) enum FirstBytes {
    /// A TLS ClientHello; nothing was consumed.
    Tls,
    /// ICE-TCP; the payload of the first RFC 4571 frame (consumed, nothing after it).
    IceTcp(Vec<u8>),
}

/// Why a connection was closed before HTTPS or media got it (the `reason` of
/// `relaydesk_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Not a TLS ClientHello nor a framed STUN Binding request.
    Unrecognised(crate::first_bytes::Rejection),
    /// Nothing decisive within the handshake timeout.
    FirstBytesTimeout,
    /// Closed (or failed) before its first bytes were complete.
    ClosedEarly,
    /// ICE-TCP when media over TCP is off (or no media side runs).
    IceTcpUnavailable,
    /// ICE-TCP naming an ICE username fragment no participant has.
    IceTcpUnknownUser,
    /// TLS on the dedicated ICE-TCP port.
    TlsOnMediaPort,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Unrecognised(r) => r.as_str(),
            Refusal::FirstBytesTimeout => "first_bytes_timeout",
            Refusal::ClosedEarly => "closed_early",
            Refusal::IceTcpUnavailable => "ice_tcp_unavailable",
            Refusal::IceTcpUnknownUser => "ice_tcp_unknown_user",
            Refusal::TlsOnMediaPort => "tls_on_media_port",
        }
    }
}

/// Counts and logs a refused connection; dropping the stream closes it.
pub(super) fn refuse(peer: SocketAddr, refusal: Refusal) {
    metrics::counter!("relaydesk_connections_refused_total", "reason" => refusal.as_str()).increment(1);
    tracing::debug!(%peer, reason = refusal.as_str(), "connection refused");
}

/// Reads the first bytes of a connection as [`crate::first_bytes::classify`] asks: a TLS connection is
/// recognised by peeking at its first byte (nothing consumed); otherwise exactly the first frame is read
/// (at most `MAX_FIRST_FRAME` + 2 bytes). The caller bounds the time.
pub(super) async fn first_bytes(tcp: &mut tokio::net::TcpStream) -> Result<FirstBytes, Refusal> {
    use crate::first_bytes::{Verdict, classify};
    use tokio::io::AsyncReadExt as _;
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) => {}
        _ => return Err(Refusal::ClosedEarly),
    }
    if classify(&first) == Verdict::Tls {
        return Ok(FirstBytes::Tls);
    }
    let mut buf = Vec::new();
    loop {
        match classify(&buf) {
            Verdict::NeedMore { total } => {
                let have = buf.len();
                buf.resize(total, 0);
                if tcp.read_exact(&mut buf[have..]).await.is_err() {
                    return Err(Refusal::ClosedEarly);
                }
            }
            Verdict::IceTcp { len } => {
                buf.truncate(2 + len);
                buf.drain(..2);
                return Ok(FirstBytes::IceTcp(buf));
            }
            Verdict::Reject(r) => return Err(Refusal::Unrecognised(r)),
            // The first byte was not a TLS record's; classify is stable on it.
            Verdict::Tls => return Err(Refusal::Unrecognised(crate::first_bytes::Rejection::NotStun)),
        }
    }
}

/// Passes an ICE-TCP connection (its first frame read) to the media side, which finds the participant by
/// the ICE username fragment; closes and counts it when media over TCP is off or nobody has that fragment.
pub(super) async fn hand_over_ice_tcp(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    first_frame: Vec<u8>,
    state: &SharedLive,
) {
    let media = state
        .live
        .media()
        .filter(|_| state.config.media.enabled && state.config.media.ice_tcp);
    let Some(media) = media else {
        return refuse(peer, Refusal::IceTcpUnavailable);
    };
    let (Ok(local), Ok(stream)) = (tcp.local_addr(), tcp.into_std()) else {
        return refuse(peer, Refusal::ClosedEarly);
    };
    let conn = crate::media::IceTcpConnection {
        stream,
        peer,
        local,
        first_frame,
    };
    match media.accept_ice_tcp(conn).await {
        Ok(()) => {
            metrics::counter!("relaydesk_ice_tcp_connections_total").increment(1);
            tracing::debug!(%peer, "ICE-TCP connection handed to the SFU");
        }
        Err(crate::media::MediaError::NotFound) => refuse(peer, Refusal::IceTcpUnknownUser),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "ICE-TCP connection not taken");
            refuse(peer, Refusal::IceTcpUnavailable);
        }
    }
}

/// The public address of the passive ICE-TCP candidate: the port of the dedicated ICE-TCP listener when
/// there is one, else the HTTPS port; the address `media.announce_ip`, else the listener's own when it is
/// not a wildcard, else `media.bind_ip` when that is not one. `None` when ICE-TCP is off or no address is
/// known (then calls use UDP only).
pub fn ice_tcp_candidate(
    media: &crate::config::MediaConfig,
    https: SocketAddr,
    tcp_listen: Option<SocketAddr>,
) -> Option<SocketAddr> {
    if !media.enabled || !media.ice_tcp {
        return None;
    }
    let base = tcp_listen.unwrap_or(https);
    let ip = media
        .announce_ip
        .or(Some(base.ip()).filter(|ip| !ip.is_unspecified()))
        .or(Some(media.bind_ip).filter(|ip| !ip.is_unspecified()));
    match ip {
        Some(ip) => Some(SocketAddr::new(ip, base.port())),
        None => {
            tracing::warn!("no address to announce for ICE-TCP (set media.announce_ip); media over UDP only");
            None
        }
    }
}

/// The accept loop of the dedicated ICE-TCP port (`[media] tcp_listen`): ICE-TCP only, TLS is refused.
/// At most `http.max_connections` connections are being classified at once; a connection handed to the SFU
/// no longer counts (the SFU bounds its own).
pub(super) async fn serve_ice_tcp(listener: TcpListener, state: SharedLive, shutdown: ShutdownHandle) {
    let handshake_timeout = Duration::from_secs(state.config.http.handshake_timeout_secs);
    let slots = Arc::new(tokio::sync::Semaphore::new(state.config.http.max_connections));
    let mut stop = shutdown.subscribe();
    loop {
        let permit = tokio::select! {
            _ = stopped(&mut stop) => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (mut tcp, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "ICE-TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            match tokio::time::timeout(handshake_timeout, first_bytes(&mut tcp)).await {
                Ok(Ok(FirstBytes::IceTcp(frame))) => hand_over_ice_tcp(tcp, peer, frame, &state).await,
                Ok(Ok(FirstBytes::Tls)) => refuse(peer, Refusal::TlsOnMediaPort),
                Ok(Err(refusal)) => refuse(peer, refusal),
                Err(_) => refuse(peer, Refusal::FirstBytesTimeout),
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests;
