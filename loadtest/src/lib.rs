//! RelayDesk load tester: simulated customers and agents end to end, and the same media load against
//! Janus for comparison.
//!
//! - [`media`]: the target-independent media engine (str0m clients in RTP mode, sharded threads).
//! - [`target`]: what the load runs against (RelayDesk, the RelayDesk SFU alone, Janus VideoRoom).
//! - [`run`]: ramp, hold, live progress, the report; [`report`]: table, JSON, chart, thresholds.
//! - [`soak`]: long runs: the server's memory, descriptors, threads and tail latencies sampled, fitted
//!   and checked for growth.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod compare;
pub mod http;
pub mod media;
pub mod report;
pub mod run;
pub mod soak;
pub mod stats;
pub mod sys;
pub mod target;
