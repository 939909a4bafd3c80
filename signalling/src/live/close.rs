//! The sockets of the live layer: the id that names one, and the close codes of the visitor and agent
//! sockets (besides the standard 1000, 1001, 1008, 1009, 1011). A leaf.

/// The first frame was not `hello` (token socket) or `resume` (socket opened without a token), or it did
/// not arrive within 10 s.
pub const PROTOCOL: u16 = 4400;
/// The resume token is unknown, used or expired; on the agent socket: the login session ended.
pub const RESUME_REFUSED: u16 = 4401;
/// The socket's `Origin` does not match the conversation's.
pub const ORIGIN: u16 = 4403;
/// No frame or pong for two ping intervals.
pub const KEEPALIVE: u16 = 4408;
/// Another socket resumed this conversation (only the newest socket is served).
pub const SUPERSEDED: u16 = 4409;
/// The client does not read its frames fast enough (outbox full, or a write blocked for 10 s).
pub const SLOW_CONSUMER: u16 = 4429;
/// Agent socket: the user's groups changed; reconnect to get the new ones.
pub const RIGHTS_CHANGED: u16 = 4410;
/// The server is at a conversation cap (`[live.limits]`); an `error` frame with code `busy` comes first.
pub const BUSY: u16 = 4503;

/// A cluster's leader stopped in order: the conversation moves to another node; reconnect and resume.
pub const SERVICE_RESTART: u16 = 1012;

/// Identifies one WebSocket within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u64);
