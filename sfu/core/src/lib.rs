//! RelayDesk SFU core: a sans-IO selective forwarding unit on [str0m](https://docs.rs/str0m).
//!
//! The core owns rooms (one per conversation) and participants (one boxed `str0m::Rtc` each: ICE-lite,
//! RTP mode, TWCC bandwidth estimation on). It never reads a clock, opens a socket or spawns a thread:
//! time, datagrams and commands are inputs; transmits, events and the next timeout are outputs. See
//! [`Sfu`] for the call order.
//!
//! # Negotiation: the client always offers
//! Each browser creates one `RTCPeerConnection` and **offers**; the server only ever answers
//! ([`Command::AddParticipant`], then [`Command::Renegotiate`] for later offers). So there is no glare and
//! no server-side offer state. The m-lines of a client's offer play two roles:
//! - an m-line the client **sends** on (`sendrecv` or `sendonly`) is one of its published *tracks*;
//! - an m-line the client **receives** on (`sendrecv` or `recvonly`) is a *receive slot*: the server maps
//!   one track of another member (of the same kind) into it and sends that track there, with its own SSRC,
//!   sequence numbers and timestamps.
//!
//! A visitor or agent therefore offers `audio sendrecv` + `video sendrecv` (+ data channels): its own
//! camera/microphone go up, the other party's come down on the same m-lines. A supervisor offers `recvonly`
//! m-lines (two audio, two video) — or `sendrecv` audio for whisper. Adding video mid-call is a re-offer with
//! a `sendrecv` video m-line (or simply `replaceTrack` on an existing transceiver: no renegotiation).
//! When a member should receive more tracks than it has slots (a third party joined, the other side added
//! video and this client offered none), the server emits [`Event::RenegotiationNeeded`] with the number of
//! audio and video slots needed; the client adds `recvonly` transceivers and re-offers. Slots keep their
//! assignment while their source lives, so a re-offer never interrupts media. This works with Chrome's
//! unified plan as is (transceivers, `ontrack` per m-line).
//!
//! Only the server's host candidates are put in answers: UDP (`SfuConfig::local_addrs`) first, then passive
//! TCP ones (`SfuConfig::tcp_addrs`, ICE-TCP, RFC 6544) at a lower priority; remote candidates are never
//! needed (ICE-lite: the browser's connectivity checks reveal its address to the server only). Inputs and
//! transmits name their [`Transport`]; framing TCP (RFC 4571) is the embedder's job.
//!
//! # Forwarding
//! RTP mode: incoming packets arrive decrypted (`Event::RtpPacket`), the payload (`Arc<[u8]>`) is shared by
//! all subscribers without copying, and each subscriber's slot has its own [`rewrite`] state: sequence
//! numbers from 1 (so the subscriber's SRTP rollover counter is right), timestamps continuous across a
//! publisher restart, a publisher change and a simulcast layer switch. NACK/RTX is per leg (str0m keeps the
//! send buffer, written with `nackable` for video). Video is held back until a keyframe after a (re)start;
//! keyframe requests (subscriber PLI/FIR, new subscribers, layer switches, a participant heard again after
//! a second or more of silence: its path was cut, both its own video and what it receives restart on
//! keyframes) are coalesced and throttled per (track, layer) before one PLI goes upstream. With simulcast each subscriber gets the best layer its TWCC
//! estimate allows, switched on a keyframe of the target layer, with hysteresis: down as soon as the layer
//! exceeds 85% of the estimate, up only to a layer within 70% of it and at least 2 s after the last switch.
//!
//! # Data channels
//! See [`wire`] for the in-call text and file-transfer formats.

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod codec;
pub mod framing;
pub mod rewrite;
mod sfu;
mod stun;
mod types;
pub mod wire;

pub use sfu::Sfu;

/// The local (server-side) ICE ufrag named by a STUN request's USERNAME `"<local>:<remote>"`, if `data` is a
/// STUN message carrying one. Bounded and panic-free on any input: an embedder uses it on the first frame of
/// a new ICE-TCP connection to find the shard that owns it ([`Sfu::owns_ufrag`]).
pub fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    stun::local_ufrag(data)
}
pub use types::*;
