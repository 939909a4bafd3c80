//! What the load runs against. Every target sets up one conversation (two media participants in a room
//! of their own) and hands the negotiated peers to the shared [`MediaEngine`]; the media figures are
//! therefore measured identically for every target.

pub mod janus;
pub mod relaydesk;
pub mod sfu;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::media::MediaEngine;
use crate::stats::{new_histogram, record_clamped};

/// Why a conversation failed, and at which stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFailure {
    /// The stage (e.g. `token`, `socket`, `publish`).
    pub stage: &'static str,
    /// A short reason, safe to print (no secrets).
    pub reason: String,
}

impl StageFailure {
    /// A failure at `stage`.
    pub fn new(stage: &'static str, reason: impl std::fmt::Display) -> Self {
        StageFailure {
            stage,
            reason: reason.to_string(),
        }
    }
}

/// Figures the signalling side of a conversation records (shared by all conversations).
#[derive(Debug, Default)]
pub struct Signalling {
    /// Time to reach each stage, from the start of the conversation (µs).
    pub stages: BTreeMap<&'static str, Histogram<u64>>,
    /// Chat messages sent.
    pub chat_sent: u64,
    /// Chat messages received by the other side.
    pub chat_received: u64,
    /// Chat round trips (µs).
    pub chat_rtt: Option<Histogram<u64>>,
    /// Unmasked card numbers seen on the agent side (must be 0).
    pub masking_violations: u64,
    /// Files whose SHA-256 did not match (must be 0).
    pub file_failures: u64,
    /// Files transferred and checked.
    pub files_ok: u64,
}

impl Signalling {
    /// Records that `stage` was reached `since` after the conversation began.
    pub fn stage(&mut self, stage: &'static str, since: Instant) {
        let h = self.stages.entry(stage).or_insert_with(new_histogram);
        record_clamped(h, since.elapsed().as_micros() as u64);
    }
}

/// Shared state handed to every conversation.
#[derive(Clone)]
pub struct Ctx {
    /// The media engine the peers go to.
    pub engine: Arc<MediaEngine>,
    /// Signalling figures.
    pub signalling: Arc<Mutex<Signalling>>,
    /// Conversations fully set up so far.
    pub established: Arc<AtomicU64>,
    /// Send audio.
    pub audio: bool,
    /// Send video.
    pub video: bool,
    /// Becomes `true` when the run ends: a conversation keeps its signalling alive until then.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// With churn: when this conversation ends (before the run does), freeing its place for a new one.
    pub until: Option<tokio::time::Instant>,
}

impl Ctx {
    /// Marks this conversation as set up (counted as a success).
    pub fn ready(&self) {
        self.established.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until the run ends, or this conversation's lifetime ([`Ctx::until`]) does.
    pub async fn until_stopped(&self) {
        let mut stop = self.stop.clone();
        let run_ends = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match self.until {
            Some(at) => tokio::select! {
                _ = run_ends => {}
                _ = tokio::time::sleep_until(at) => {}
            },
            None => run_ends.await,
        }
    }

    /// This context for a conversation that lives until the run ends (the agents' consoles).
    pub fn for_the_whole_run(&self) -> Ctx {
        Ctx {
            until: None,
            ..self.clone()
        }
    }

    /// Records a stage time.
    pub fn stage(&self, stage: &'static str, since: Instant) {
        self.signalling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stage(stage, since);
    }
}

/// A system under test.
pub trait Target: Send + Sync {
    /// A short name for reports (`janus`, `relaydesk-sfu`, `relaydesk`).
    fn name(&self) -> &'static str;
    /// Sets up conversation `index`, keeps it up until the run stops, and tears it down.
    fn conversation(&self, index: u64, ctx: &Ctx) -> impl Future<Output = Result<(), StageFailure>> + Send;
    /// Checks before the run that the target is reachable and the credentials work; a clear message if not.
    fn preflight(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// A cheap liveness probe during the run.
    fn alive(&self) -> impl Future<Output = bool> + Send;
}
