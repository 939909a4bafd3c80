//! The `relaydesk` program's own wiring, shared by the binary and its end-to-end tests: the SFU driver
//! behind signalling's media seam.

pub mod media;
pub mod recorder;
