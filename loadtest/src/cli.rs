//! Command line: `relaydesk-loadtest [OPTIONS]` runs a load; `relaydesk-loadtest serve-sfu` serves the
//! RelayDesk SFU alone for the SFU-level comparison.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Errors in the command line beyond what clap checks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CliError {
    /// A flag needs another one.
    #[error("{0}")]
    Missing(String),
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Which system the load runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// A RelayDesk server: visitors, agents, chat, calls through the WebSocket API.
    Relaydesk,
    /// The RelayDesk SFU alone, served by `relaydesk-loadtest serve-sfu` (media only).
    RelaydeskSfu,
    /// Janus VideoRoom over its HTTP API (media only).
    Janus,
}

/// How the simulated clients carry media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MediaTransport {
    /// UDP (a host candidate per client).
    Udp,
    /// TCP only (ICE-TCP, RFC 6544): each client offers only an active TCP candidate and reaches the
    /// server's passive TCP candidate (the HTTPS port, or `[media] tcp_listen`) with RFC 4571 framing.
    Tcp,
}

/// Load tester for RelayDesk (and Janus, for comparison).
#[derive(Debug, Parser)]
#[command(name = "relaydesk-loadtest", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Serve the RelayDesk SFU alone instead of running a load.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The load to run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the RelayDesk SFU (driver + forwarding core) behind a plain HTTP offer/answer endpoint.
    ServeSfu {
        /// HTTP address to listen on.
        #[arg(long, default_value = "127.0.0.1:8099")]
        listen: SocketAddr,
        /// Address the media sockets bind to (and announce).
        #[arg(long, default_value = "127.0.0.1")]
        media_ip: IpAddr,
        /// Shard threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        shards: usize,
    },
    /// Compare JSON reports of several targets and sizes: a Markdown table with ratios, and a chart.
    Compare {
        /// Write the Markdown table here (also printed).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the HTML chart here.
        #[arg(long)]
        chart: Option<PathBuf>,
        /// Loss limit (%) for "held".
        #[arg(long, default_value_t = 1.0)]
        max_loss: f64,
        /// p99 latency limit (ms) for "held".
        #[arg(long, default_value_t = 50.0)]
        max_p99_ms: f64,
        /// The JSON reports.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
    /// Fit (again) the soak samples of a JSON report and write the plot, samples and fits; exit 1 when a
    /// metric grew past its bound.
    SoakReport {
        /// The JSON report of a `--soak` run.
        report: PathBuf,
        /// Write `PREFIX.svg`, `PREFIX.csv` and `PREFIX.md`.
        #[arg(long)]
        out: PathBuf,
        /// Minutes of warm-up left out of the fit (default: the run's own).
        #[arg(long)]
        warmup_min: Option<f64>,
        /// Title of the plot.
        #[arg(long, default_value = "RelayDesk soak")]
        title: String,
    },
    /// Exit 0 once `url` answers HTTP (any status), 3 otherwise: a readiness probe for scripts.
    Probe {
        /// The URL to ask.
        url: String,
    },
}

/// Options of a load run.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// What to load.
    #[arg(long, value_enum, default_value = "relaydesk")]
    pub target: TargetKind,
    /// RelayDesk URL (`https://host:port`), or the `serve-sfu` URL for `--target relaydesk-sfu`. Repeat it
    /// for the nodes of a cluster (`--target relaydesk`): conversation `i` uses node `i % n`, agent `j` node
    /// `(j + 1) % n`, the setup the first; the report adds a line per node.
    #[arg(long)]
    pub url: Vec<String>,
    /// Janus HTTP API URL, e.g. `http://127.0.0.1:8088/janus` (for `--target janus`).
    #[arg(long)]
    pub janus_url: Option<String>,
    /// Create a test group, site key and agents through the admin API first.
    #[arg(long)]
    pub setup: bool,
    /// Admin user for `--setup`.
    #[arg(long, default_value = "admin")]
    pub admin_user: String,
    /// File holding the admin password (first line).
    #[arg(long)]
    pub admin_password_file: Option<PathBuf>,
    /// Existing site key (without `--setup`).
    #[arg(long)]
    pub site_key: Option<String>,
    /// Existing agents (without `--setup`): comma-separated user names sharing `--agent-password-file`.
    #[arg(long, value_delimiter = ',')]
    pub agents: Vec<String>,
    /// File holding the agents' password (without `--setup`).
    #[arg(long)]
    pub agent_password_file: Option<PathBuf>,
    /// Origin the simulated widget reports (must be allowed by the site key).
    #[arg(long, default_value = "https://loadtest.invalid")]
    pub origin: String,
    /// Concurrent conversations.
    #[arg(long, default_value_t = 10)]
    pub conversations: u32,
    /// New conversations per second while ramping up.
    #[arg(long, default_value_t = 10.0)]
    pub ramp: f64,
    /// How long to hold the load after the ramp, e.g. `30s`, `2m`, `90`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Send audio (20 ms Opus-sized packets) both ways.
    #[arg(long)]
    pub audio: bool,
    /// Send video (VP8-sized frames) both ways.
    #[arg(long)]
    pub video: bool,
    /// Video bitrate per sender in kbit/s.
    #[arg(long, default_value_t = 500)]
    pub video_kbps: u32,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Keyframe interval, e.g. `2s`.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub keyframe_interval: Duration,
    /// Chat messages per second per conversation (each side).
    #[arg(long, default_value_t = 0.2)]
    pub chat_rate: f64,
    /// Fraction of chat messages that carry a card number (0..=1).
    #[arg(long, default_value_t = 0.2)]
    pub card_fraction: f64,
    /// Size in bytes of a file sent once per conversation (0: none).
    #[arg(long, default_value_t = 0)]
    pub file_size: u64,
    /// `--target relaydesk --setup`: the test group records its calls (policy `always`), to measure what
    /// recording costs against a run without it.
    #[arg(long)]
    pub record: bool,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HTML chart of latency and throughput over time here.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Fail (exit 1) when media loss exceeds this percentage.
    #[arg(long)]
    pub max_loss: Option<f64>,
    /// Fail (exit 1) when the p99 media latency exceeds this many ms.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Fail (exit 1) when fewer than this percentage of conversations succeed.
    #[arg(long)]
    pub min_success: Option<f64>,
    /// Accept any TLS certificate (self-signed test servers).
    #[arg(long, conflicts_with = "ca_cert")]
    pub insecure: bool,
    /// Trust this PEM CA certificate.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// The server's process id, for its CPU and memory (found by name when local and unique).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Media shard threads of the generator (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// Address the generator's media sockets bind to.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub media_ip: IpAddr,
    /// Media transport of the simulated clients (`tcp`: `--target relaydesk` only).
    #[arg(long, value_enum, default_value = "udp")]
    pub transport: MediaTransport,
    /// No live progress display.
    #[arg(long)]
    pub quiet: bool,
    /// Churn (RelayDesk target): each conversation lasts this long, e.g. `2m`, then ends and a new one
    /// takes its place until the run ends, so set-up and tear-down run all along (and each new
    /// conversation sends its `--file-size` file).
    #[arg(long, value_parser = parse_duration)]
    pub churn: Option<Duration>,
    /// Soak mode: sample the server's memory, file descriptors, threads and the p99 latencies every
    /// `--sample-every` through the hold, fit a least-squares line to each and fail (exit 1) when one
    /// grows past its bound (see the README's "Soak" section). Needs the server's process id.
    #[arg(long)]
    pub soak: bool,
    /// Soak sampling interval.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// Soak: the start of the hold left out of the fit (default: one `--churn` lifetime, else one sample).
    #[arg(long, value_parser = parse_duration)]
    pub soak_warmup: Option<Duration>,
    /// Soak: write `PREFIX.svg` (the plot), `PREFIX.csv` (the samples) and `PREFIX.md` (the fits).
    #[arg(long)]
    pub soak_out: Option<PathBuf>,
}

/// Parses `30s`, `2m`, `1h`, `500ms` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 30s, 2m, 500ms)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl RunArgs {
    /// The soak warm-up: `--soak-warmup`, else one `--churn` lifetime, else one sampling interval.
    pub fn warmup(&self) -> Duration {
        self.soak_warmup.or(self.churn).unwrap_or(self.sample_every)
    }

    /// Checks the combinations clap cannot.
    pub fn validate(&self) -> Result<(), CliError> {
        let invalid = |m: &str| Err(CliError::Invalid(m.to_string()));
        match self.target {
            TargetKind::Janus if self.janus_url.is_none() => {
                return Err(CliError::Missing(
                    "--target janus needs --janus-url (e.g. http://127.0.0.1:8088/janus)".into(),
                ));
            }
            TargetKind::Relaydesk | TargetKind::RelaydeskSfu if self.url.is_empty() => {
                return Err(CliError::Missing(
                    "--url is needed (e.g. https://127.0.0.1:8443)".into(),
                ));
            }
            TargetKind::RelaydeskSfu | TargetKind::Janus if self.url.len() > 1 => {
                return invalid("several --url need --target relaydesk");
            }
            _ => {}
        }
        if self.transport == MediaTransport::Tcp && self.target != TargetKind::Relaydesk {
            return invalid("--transport tcp needs --target relaydesk");
        }
        if self.target == TargetKind::Relaydesk {
            if self.setup && self.admin_password_file.is_none() {
                return Err(CliError::Missing("--setup needs --admin-password-file".into()));
            }
            if !self.setup && (self.site_key.is_none() || self.agents.is_empty() || self.agent_password_file.is_none())
            {
                return Err(CliError::Missing(
                    "without --setup, give --site-key, --agents and --agent-password-file".into(),
                ));
            }
        }
        if self.conversations == 0 || self.conversations > 100_000 {
            return invalid("--conversations must be 1..=100000");
        }
        if !(self.ramp.is_finite() && self.ramp > 0.0) {
            return invalid("--ramp must be a positive number of conversations per second");
        }
        if self.duration.is_zero() {
            return invalid("--duration must be positive");
        }
        if self.video && !(1..=50_000).contains(&self.video_kbps) {
            return invalid("--video-kbps must be 1..=50000");
        }
        if !(1..=120).contains(&self.fps) {
            return invalid("--fps must be 1..=120");
        }
        if self.keyframe_interval < Duration::from_millis(100) {
            return invalid("--keyframe-interval must be at least 100ms");
        }
        if !(self.chat_rate.is_finite() && (0.0..=100.0).contains(&self.chat_rate)) {
            return invalid("--chat-rate must be 0..=100 messages per second");
        }
        if !(0.0..=1.0).contains(&self.card_fraction) {
            return invalid("--card-fraction must be 0..=1");
        }
        if self.file_size > 1 << 30 {
            return invalid("--file-size must be at most 1 GiB");
        }
        for (name, v) in [("--max-loss", self.max_loss), ("--min-success", self.min_success)] {
            if v.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
                return Err(CliError::Invalid(format!("{name} is a percentage (0..=100)")));
            }
        }
        if self.max_p99_ms.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            return invalid("--max-p99-ms must be positive");
        }
        if self.churn.is_some() && self.target != TargetKind::Relaydesk {
            return invalid("--churn works with --target relaydesk only");
        }
        if self.churn.is_some_and(|c| c < Duration::from_secs(5)) {
            return invalid("--churn must be at least 5s (a conversation needs time to set up)");
        }
        if self.soak && self.sample_every < Duration::from_secs(1) {
            return invalid("--sample-every must be at least 1s");
        }
        if self.soak && self.duration < self.sample_every * 3 + self.soak_warmup.unwrap_or_default() {
            return invalid("--duration must leave room for at least three samples after the warm-up");
        }
        if self.target != TargetKind::Relaydesk && !(self.audio || self.video) {
            return invalid("this target carries media only: give --audio and/or --video");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("relaydesk-loadtest").chain(args.iter().copied()))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        for bad in ["", "x", "3 parsecs", "-1s", "1e9h", "2d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn valid_runs() {
        let c = parse(&[
            "--target",
            "janus",
            "--janus-url",
            "http://127.0.0.1:8088/janus",
            "--audio",
            "--video",
        ])
        .unwrap();
        c.run.validate().unwrap();
        let c = parse(&[
            "--url",
            "https://h:8443",
            "--setup",
            "--admin-password-file",
            "/p",
            "--conversations",
            "3",
        ])
        .unwrap();
        c.run.validate().unwrap();
        assert_eq!(c.run.conversations, 3);
        let c = parse(&["serve-sfu", "--listen", "127.0.0.1:9000"]).unwrap();
        assert!(matches!(c.command, Some(Command::ServeSfu { .. })));
    }

    #[test]
    fn invalid_runs() {
        let cases: &[&[&str]] = &[
            &["--target", "janus", "--audio"],
            &["--url", "https://h", "--setup"],
            &["--url", "https://h"],
            &[
                "--url",
                "https://h",
                "--setup",
                "--admin-password-file",
                "/p",
                "--conversations",
                "0",
            ],
            &[
                "--url",
                "https://h",
                "--setup",
                "--admin-password-file",
                "/p",
                "--ramp",
                "0",
            ],
            &[
                "--url",
                "https://h",
                "--setup",
                "--admin-password-file",
                "/p",
                "--max-loss",
                "150",
            ],
            &[
                "--url",
                "https://h",
                "--setup",
                "--admin-password-file",
                "/p",
                "--card-fraction",
                "2",
            ],
            &[
                "--url",
                "https://h",
                "--setup",
                "--admin-password-file",
                "/p",
                "--video",
                "--video-kbps",
                "0",
            ],
            &["--target", "relaydesk-sfu", "--url", "http://h:1"],
        ];
        for args in cases {
            let c = parse(args).unwrap();
            assert!(c.run.validate().is_err(), "{args:?}");
        }
        // clap itself refuses these.
        assert!(parse(&["--insecure", "--ca-cert", "/x", "--url", "https://h"]).is_err());
        assert!(parse(&["--target", "nope"]).is_err());
        assert!(parse(&["--duration", "soon"]).is_err());
    }
}
