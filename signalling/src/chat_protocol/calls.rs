//! The types of calls: parties, ICE servers, call legs, invitations, recording.

use super::*;

/// Whose call leg a `call_state` frame is about: the visitor's or the agent's peer connection, or a
/// supervisor's silent monitoring connection (reported to that supervisor only, never to the visitor, nor
/// to the agent). The same concept as a transcript's participant role.
pub use crate::domain::ParticipantRole as CallParty;

/// A TURN server a browser may relay its call through: the shape of WebRTC's `RTCIceServer`, so a client
/// passes the list to `new RTCPeerConnection({iceServers})` as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `turn:` / `turns:` URLs of one server.
    pub urls: Vec<String>,
    /// Short-lived username (`EXPIRY:ID`, EXPIRY in Unix seconds).
    pub username: String,
    /// Its password.
    pub credential: String,
}

/// The state of one party's call leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallLegState {
    /// ICE and DTLS are up: media flows.
    Connected,
    /// The leg ended (hung up, disconnected or failed).
    Left,
}

/// How a call invitation ended (`call_invitation_ended`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvitationOutcome {
    /// The invited party accepted (or invited at the same time): both parties now start their call legs
    /// (`call_prepare`, `call_offer`).
    Accepted,
    /// The invited party declined.
    Declined,
    /// The inviting party withdrew the invitation (`call_cancel`), hung up, or left the conversation.
    Cancelled,
    /// Nobody answered within `live.call_invite_timeout_ms` (45 s by default).
    Expired,
}

/// Why a party hangs up, when it is not a plain hang-up (`call_end`'s optional `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallEndReason {
    /// The person hung up.
    HungUp,
    /// This side's media never connected, or its connection failed (e.g. a network that blocks calls). The
    /// other party hears `call_state` `left` with reason `failed`.
    Failed,
}

/// Whether a call is being recorded now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Not recorded (yet, or any more).
    Off,
    /// Recorded now.
    On,
    /// Recording paused (e.g. while a card number is read out): nothing of this span is kept.
    Paused,
}

/// What an agent asks of the recording of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingAction {
    /// Start recording (policy `on_request`, or after a stop).
    Start,
    /// Pause (nothing is kept until `resume`).
    Pause,
    /// Resume after a pause.
    Resume,
}
