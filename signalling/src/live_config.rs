//! Settings of the live layer (`[live]`, `[live.files]`, `[live.limits]` in the configuration file): plain
//! data with range checks, read by the configuration and used by the live layer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the live layer (`[live]` in the configuration file). Durations for timers that tests
/// shorten are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// Lifetime of a visitor session token in seconds (1 to 60).
    pub visitor_token_ttl_secs: u64,
    /// `POST /api/v1/visitor/session` per client address per minute.
    pub sessions_per_minute_per_address: u32,
    /// `POST /api/v1/visitor/session` per site key per minute.
    pub sessions_per_minute_per_key: u32,
    /// How long a visitor whose socket dropped may resume (milliseconds); then the conversation ends.
    pub resume_grace_ms: u64,
    /// How long an agent has to accept an offer (milliseconds).
    pub offer_timeout_ms: u64,
    /// How long a call invitation rings before it expires (milliseconds).
    pub call_invite_timeout_ms: u64,
    /// How long a disconnected agent keeps their conversations before they are requeued (milliseconds).
    pub agent_reconnect_grace_ms: u64,
    /// After a declined or lapsed offer, the same agent is not offered that conversation again for this
    /// long (milliseconds).
    pub reoffer_after_ms: u64,
    /// Most visitor WebSockets open at once; further upgrades get 503. Agents have their own pool
    /// (`limits.max_agent_sockets`).
    pub max_sockets: usize,
    /// Longest message body in bytes of UTF-8.
    pub max_message_bytes: usize,
    /// Chat messages per second per socket (sustained).
    pub messages_per_second: u32,
    /// Chat messages a socket may send in a burst.
    pub message_burst: u32,
    /// Interval of the server's pings (seconds); a socket silent for two intervals is closed.
    pub ping_interval_secs: u64,
    /// Most messages kept per conversation; later ones are refused with `too_large`.
    pub max_messages_per_conversation: usize,
    /// The masking policy of every chat message (`[live.masking]`, keys as in `docs/masking.md`).
    pub masking: crate::masking::MaskPolicy,
    /// Extra patterns per agent group, on top of the global ones (`[live.masking_groups]`:
    /// `sales = [{ name = "order", regex = "\\bORD-[0-9]{6}\\b" }]`). A conversation uses its current group's.
    pub masking_groups: std::collections::BTreeMap<String, Vec<crate::masking::ExtraPattern>>,
    /// Files shared in the chat (`[live.files]`).
    pub files: FilesConfig,
    /// Conversation caps, queue timeout, byte budgets, socket pools per kind and address
    /// (`[live.limits]`).
    pub limits: LimitsConfig,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            visitor_token_ttl_secs: 60,
            sessions_per_minute_per_address: 30,
            sessions_per_minute_per_key: 600,
            resume_grace_ms: 60_000,
            offer_timeout_ms: 20_000,
            call_invite_timeout_ms: 45_000,
            agent_reconnect_grace_ms: 30_000,
            reoffer_after_ms: 60_000,
            max_sockets: 10_000,
            max_message_bytes: crate::chat_protocol::MAX_BODY_BYTES,
            messages_per_second: 5,
            message_burst: 10,
            ping_interval_secs: 20,
            max_messages_per_conversation: 5_000,
            masking: crate::masking::MaskPolicy::default(),
            masking_groups: std::collections::BTreeMap::new(),
            files: FilesConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

impl LiveConfig {
    /// Checks the ranges; the message says which key is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=60).contains(&self.visitor_token_ttl_secs) {
            return Err("live.visitor_token_ttl_secs must be from 1 to 60".into());
        }
        if self.sessions_per_minute_per_address == 0 || self.sessions_per_minute_per_key == 0 {
            return Err("live.sessions_per_minute_* must be positive".into());
        }
        if self.offer_timeout_ms == 0 || self.resume_grace_ms == 0 || self.call_invite_timeout_ms == 0 {
            return Err(
                "live.offer_timeout_ms, live.resume_grace_ms and live.call_invite_timeout_ms must be positive".into(),
            );
        }
        let day_ms = 24 * 3600 * 1000;
        let timers = [
            self.offer_timeout_ms,
            self.resume_grace_ms,
            self.agent_reconnect_grace_ms,
            self.reoffer_after_ms,
            self.call_invite_timeout_ms,
        ];
        if timers.iter().any(|t| *t > day_ms) || self.ping_interval_secs > 3600 {
            return Err("live timers must be at most one day (ping_interval_secs at most 3600)".into());
        }
        if self.max_sockets == 0 {
            return Err("live.max_sockets must be positive".into());
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > crate::chat_protocol::MAX_FRAME_BYTES / 2 {
            return Err("live.max_message_bytes must be from 1 to 8192".into());
        }
        if self.messages_per_second == 0 || self.message_burst == 0 {
            return Err("live.messages_per_second and live.message_burst must be positive".into());
        }
        if self.ping_interval_secs == 0 || self.max_messages_per_conversation == 0 {
            return Err("live.ping_interval_secs and live.max_messages_per_conversation must be positive".into());
        }
        self.files.validate()?;
        self.limits.validate()?;
        let global = self.masking.compile().map_err(|e| format!("live.masking: {e}"))?;
        for (group, patterns) in &self.masking_groups {
            global
                .with_extra(patterns)
                .map_err(|e| format!("live.masking_groups.{group}: {e}"))?;
        }
        Ok(())
    }

    /// The router's tunables.
    pub fn router_config(&self) -> crate::routing::RouterConfig {
        crate::routing::RouterConfig {
            offer_timeout: Duration::from_millis(self.offer_timeout_ms),
            reconnect_grace: Duration::from_millis(self.agent_reconnect_grace_ms),
            reoffer_after: Duration::from_millis(self.reoffer_after_ms),
            queue_timeout: Some(Duration::from_millis(self.limits.queue_timeout_ms)),
            ..Default::default()
        }
    }
}

/// Settings of chat files (`[live.files]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Largest file accepted, in bytes (at most 64 MiB). 0 disables chat files.
    pub max_bytes: u64,
    /// Accepted media types; `image/*` accepts the family (except `image/svg+xml`, which can carry
    /// script and is accepted only when listed by name). `image/png`, `image/jpeg`, `image/gif`,
    /// `image/webp` and `application/pdf` must start with their signature, `text/plain` must be UTF-8.
    pub allowed_types: Vec<String>,
    /// Most files one conversation may hold (both parties together); further uploads get 413. A slot is
    /// taken when an upload is authorised, before its body is read, and given back if it fails.
    pub max_per_conversation: usize,
    /// Accepted file name extensions (lowercase, without the dot). A name without an extension gets the
    /// usual one of its type; a known extension must agree with the declared type (`.png` is `image/png`).
    pub allowed_extensions: Vec<String>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            // Types we check by signature; no `application/octet-stream` (anything at all) and no SVG.
            allowed_types: vec![
                "image/png".into(),
                "image/jpeg".into(),
                "image/gif".into(),
                "image/webp".into(),
                "application/pdf".into(),
                "text/plain".into(),
            ],
            max_per_conversation: 20,
            allowed_extensions: ["png", "jpg", "jpeg", "gif", "webp", "pdf", "txt"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl FilesConfig {
    /// Checks the limits.
    ///
    /// # Errors
    /// A message naming the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_bytes > 64 * 1024 * 1024 {
            return Err("live.files.max_bytes must be at most 67108864".into());
        }
        if self.allowed_types.iter().any(|t| !t.contains('/') || t.len() > 100) {
            return Err("live.files.allowed_types must be media types like image/png or image/*".into());
        }
        if self
            .allowed_extensions
            .iter()
            .any(|e| e.is_empty() || e.len() > 10 || !e.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        {
            return Err("live.files.allowed_extensions must be lowercase letters and digits, like pdf".into());
        }
        Ok(())
    }

    /// Whether chat files are enabled.
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    pub(crate) fn allows_type(&self, mime: &str) -> bool {
        self.allowed_types.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            match a.strip_suffix("/*") {
                // SVG is an active document (script, external references): never by family.
                Some(family) => mime.split('/').next() == Some(family) && mime != SVG,
                None => a == mime,
            }
        })
    }
}

pub(crate) const SVG: &str = "image/svg+xml";

/// `[live.limits]`: the caps of the live layer. Every cap refuses with a documented error, never silently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most live conversations (queued or with an agent) on this server.
    pub max_live_conversations: usize,
    /// Most conversations waiting in queues on this server.
    pub max_queued_conversations: usize,
    /// Most live conversations (queued or with an agent) started through one site key.
    pub max_conversations_per_site_key: usize,
    /// A visitor waiting this long in a queue (milliseconds) is told so and the conversation ends with
    /// `queue_timeout`.
    pub queue_timeout_ms: u64,
    /// Most bytes of chat text (bodies, client ids, file names) one conversation keeps in memory; later
    /// messages are refused with `too_large`.
    pub max_text_bytes_per_conversation: usize,
    /// Most bytes of shared files one conversation keeps on disk; later uploads get 413.
    pub max_file_bytes_per_conversation: u64,
    /// Most agent-console WebSockets open at once (a pool of their own: visitors cannot exhaust it).
    pub max_agent_sockets: usize,
    /// Most visitor WebSockets open at once from one client address (IPv6: one /64); also refuses new
    /// sessions from an address at the cap.
    pub max_visitor_sockets_per_address: usize,
    /// Most file uploads in progress at once on this server (each holds up to `live.files.max_bytes` in
    /// memory until it is sealed); further uploads get 503 `busy`.
    pub max_concurrent_uploads: usize,
    /// Most file uploads in progress at once in one conversation; further uploads get 429
    /// `too_many_uploads`.
    pub max_uploads_per_conversation: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_live_conversations: 2_000,
            max_queued_conversations: 500,
            max_conversations_per_site_key: 1_000,
            queue_timeout_ms: 10 * 60 * 1000,
            max_text_bytes_per_conversation: 256 * 1024,
            max_file_bytes_per_conversation: 50 * 1024 * 1024,
            max_agent_sockets: 2_000,
            max_visitor_sockets_per_address: 50,
            max_concurrent_uploads: 16,
            max_uploads_per_conversation: 2,
        }
    }
}

impl LimitsConfig {
    /// Checks the ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let counts = [
            self.max_live_conversations,
            self.max_queued_conversations,
            self.max_conversations_per_site_key,
            self.max_text_bytes_per_conversation,
            self.max_agent_sockets,
            self.max_visitor_sockets_per_address,
            self.max_concurrent_uploads,
            self.max_uploads_per_conversation,
        ];
        if counts.contains(&0) || self.max_file_bytes_per_conversation == 0 {
            return Err("live.limits.max_* must be positive".into());
        }
        if self.queue_timeout_ms == 0 || self.queue_timeout_ms > 24 * 3600 * 1000 {
            return Err("live.limits.queue_timeout_ms must be from 1 to 86400000 (one day)".into());
        }
        Ok(())
    }
}
