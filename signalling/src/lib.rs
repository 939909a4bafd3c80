//! RelayDesk signalling: the HTTPS/WSS API, accounts, tokens, routing, chat with masking and the archive.
//!
//! The media side is reached only through the [`MediaControl`]-style trait this crate defines (added with
//! calls); this crate never depends on the SFU crates.

pub mod masking;
