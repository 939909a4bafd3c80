//! The report: every figure of a run, a summary table, JSON, an HTML chart, and the threshold verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stats::percentile_ms;

/// Percentiles of a histogram in ms.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl Percentiles {
    /// From a histogram in µs.
    pub fn of(h: &Histogram<u64>) -> Self {
        Percentiles {
            count: h.len(),
            p50_ms: percentile_ms(h, 50.0),
            p95_ms: percentile_ms(h, 95.0),
            p99_ms: percentile_ms(h, 99.0),
            max_ms: if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
        }
    }
}

/// One point of the time series (one per second).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Point {
    /// Seconds since the start.
    pub t: f64,
    /// Conversations set up so far.
    pub established: u64,
    /// Media packets received per second.
    pub rx_pps: f64,
    /// Media packets sent per second.
    pub tx_pps: f64,
    /// Latency median over this second (ms).
    pub p50_ms: f64,
    /// Latency p99 over this second (ms).
    pub p99_ms: f64,
    /// Cumulative loss (%).
    pub loss_pct: f64,
    /// Generator CPU (% of one core).
    pub generator_cpu_pct: f64,
    /// Server CPU (% of one core), when known.
    pub server_cpu_pct: Option<f64>,
    /// Server resident memory (MiB), when known.
    pub server_rss_mib: Option<f64>,
}

/// Media figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MediaFigures {
    /// Peer connections created.
    pub peers: u64,
    /// Peer connections connected (ICE + DTLS).
    pub connected: u64,
    /// Peer connections that failed or disconnected.
    pub failed: u64,
    /// Peers that received media.
    pub receiving: u64,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// Stamped RTP packets received.
    pub packets_received: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Loss from sequence gaps (%).
    pub loss_pct: f64,
    /// Packets lost.
    pub lost: u64,
    /// Mean jitter (ms).
    pub jitter_ms: f64,
    /// NACKs sent by receivers.
    pub nacks_sent: u64,
    /// NACKs received by senders.
    pub nacks_received: u64,
    /// Keyframe requests received by senders.
    pub keyframe_requests: u64,
    /// Datagrams the generator could not send.
    pub send_drops: u64,
    /// End-to-end latency.
    pub latency: Percentiles,
    /// Peer creation to connected.
    pub connect_time: Percentiles,
    /// Peer creation to first media received.
    pub first_media: Percentiles,
    /// Lateness of the generator's scheduled sends.
    pub send_lateness: Percentiles,
    /// Packets received per second during the hold phase (the forwarder's media egress).
    pub rx_pps_hold: f64,
}

/// Resource figures of a process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessFigures {
    /// Process id, when known.
    pub pid: Option<u32>,
    /// CPU seconds used during the run.
    pub cpu_seconds: Option<f64>,
    /// Mean CPU in % of one core during the hold phase.
    pub cpu_pct_hold: Option<f64>,
    /// Peak resident memory seen (MiB).
    pub peak_rss_mib: Option<f64>,
    /// Resident memory when the run started, before its setup and any conversation (MiB).
    pub start_rss_mib: Option<f64>,
}

/// What one node (one `--url`) carried in a run against several nodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeFigures {
    /// The node's URL.
    pub url: String,
    /// Conversations whose visitor used this node.
    pub started: u64,
    /// Of those, the ones assigned to an agent.
    pub assigned: u64,
    /// Of those, the ones that failed (at any stage).
    pub failed: u64,
    /// Time from the session request to `assigned`.
    pub to_assigned: Option<Percentiles>,
    /// The node's own `relaydesk_*` counters from its `/metrics` at the end of the run.
    pub metrics: BTreeMap<String, f64>,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// `relaydesk`, `relaydesk-sfu` or `janus`.
    pub target: String,
    /// Whether the run completed (false: aborted; the figures are partial).
    pub complete: bool,
    /// Why the run was aborted, if it was.
    pub aborted: Option<String>,
    /// Conversations asked for.
    pub conversations: u32,
    /// Conversations set up.
    pub established: u64,
    /// Success rate (%).
    pub success_pct: f64,
    /// Failures by stage and reason.
    pub failures: BTreeMap<String, u64>,
    /// Time to reach each signalling stage.
    pub stages: BTreeMap<String, Percentiles>,
    /// Chat messages sent / received on the other side.
    pub chat_sent: u64,
    /// Chat messages received.
    pub chat_received: u64,
    /// Chat round trip.
    pub chat_rtt: Option<Percentiles>,
    /// Unmasked card numbers that reached an agent (must be 0).
    pub masking_violations: u64,
    /// Files that arrived damaged (must be 0).
    pub file_failures: u64,
    /// Files checked.
    pub files_ok: u64,
    /// Media.
    pub media: MediaFigures,
    /// The server process.
    pub server: ProcessFigures,
    /// The generator itself.
    pub generator: ProcessFigures,
    /// Server CPU seconds per forwarded (received) packet, in µs.
    pub server_cpu_us_per_packet: Option<f64>,
    /// Reasons the generator may itself have been the bottleneck.
    pub generator_bottleneck: Vec<String>,
    /// Seconds of the ramp and of the hold phase.
    pub ramp_seconds: f64,
    /// Seconds of the hold phase.
    pub hold_seconds: f64,
    /// The time series.
    pub timeline: Vec<Point>,
    /// Threshold results.
    pub thresholds: Vec<ThresholdResult>,
    /// The server's own `relaydesk_*` counters from `/metrics` at the end of the run (RelayDesk target).
    pub server_metrics: BTreeMap<String, f64>,
    /// Conversations started (with churn, more than `conversations`); the success rate counts these.
    pub attempts: u64,
    /// Soak sampling and its fits, when asked for.
    pub soak: Option<crate::soak::SoakFigures>,
    /// Per node, when the run was given several `--url`s (RelayDesk target).
    pub nodes: Vec<NodeFigures>,
}

/// The `relaydesk_*` samples of a Prometheus text exposition (`name{labels} value` lines).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("relaydesk_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.trim().parse::<f64>().ok()?))
        })
        .collect()
}

/// One threshold and whether it held.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThresholdResult {
    /// `max-loss`, `max-p99-ms`, `min-success`, `masking`, `files`.
    pub name: String,
    /// The limit.
    pub limit: f64,
    /// The measured value.
    pub value: f64,
    /// Whether it held.
    pub ok: bool,
}

/// The thresholds of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Thresholds {
    /// Maximum loss (%).
    pub max_loss: Option<f64>,
    /// Maximum p99 latency (ms).
    pub max_p99_ms: Option<f64>,
    /// Minimum success (%).
    pub min_success: Option<f64>,
}

impl Report {
    /// Checks the thresholds (masking violations and damaged files always count) and stores the results.
    /// Returns whether all held.
    pub fn check(&mut self, t: &Thresholds) -> bool {
        let mut out = Vec::new();
        if let Some(l) = t.max_loss {
            out.push(ThresholdResult {
                name: "max-loss".into(),
                limit: l,
                value: self.media.loss_pct,
                ok: self.media.loss_pct <= l,
            });
        }
        if let Some(l) = t.max_p99_ms {
            let v = self.media.latency.p99_ms;
            out.push(ThresholdResult {
                name: "max-p99-ms".into(),
                limit: l,
                value: v,
                ok: v <= l && self.media.latency.count > 0,
            });
        }
        if let Some(l) = t.min_success {
            out.push(ThresholdResult {
                name: "min-success".into(),
                limit: l,
                value: self.success_pct,
                ok: self.success_pct >= l,
            });
        }
        out.push(ThresholdResult {
            name: "masking-violations".into(),
            limit: 0.0,
            value: self.masking_violations as f64,
            ok: self.masking_violations == 0,
        });
        out.push(ThresholdResult {
            name: "file-failures".into(),
            limit: 0.0,
            value: self.file_failures as f64,
            ok: self.file_failures == 0,
        });
        if let Some(soak) = &self.soak {
            out.push(ThresholdResult {
                name: "soak-flat".into(),
                limit: 0.0,
                value: soak.slopes.iter().filter(|f| !f.flat).count() as f64,
                ok: soak.flat,
            });
        }
        let ok = out.iter().all(|r| r.ok);
        self.thresholds = out;
        ok
    }

    /// The server's memory per conversation set up (MiB): its peak resident memory less its memory when
    /// the run started, over the conversations set up. `None` without both figures or any conversation.
    pub fn memory_per_conversation_mib(&self) -> Option<f64> {
        let (peak, start) = self.server.peak_rss_mib.zip(self.server.start_rss_mib)?;
        (self.established > 0).then(|| (peak - start).max(0.0) / self.established as f64)
    }

    /// The summary table printed at the end.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let status = if self.complete {
            "complete".to_string()
        } else {
            format!("ABORTED: {}", self.aborted.as_deref().unwrap_or("?"))
        };
        let _ = writeln!(s, "relaydesk-loadtest report — target {} ({status})", self.target);
        let _ = writeln!(s, "{:-<78}", "");
        let row = |s: &mut String, k: &str, v: String| {
            let _ = writeln!(s, "{k:<34} {v}");
        };
        if self.attempts > u64::from(self.conversations) {
            row(
                &mut s,
                "conversations (set up / started)",
                format!(
                    "{} / {} ({:.1}%), {} at once",
                    self.established, self.attempts, self.success_pct, self.conversations
                ),
            );
        } else {
            row(
                &mut s,
                "conversations (set up / asked)",
                format!(
                    "{} / {} ({:.1}%)",
                    self.established, self.conversations, self.success_pct
                ),
            );
        }
        for (k, v) in &self.failures {
            row(&mut s, &format!("  failed: {k}"), v.to_string());
        }
        for (k, p) in &self.stages {
            row(
                &mut s,
                &format!("time to {k} (ms)"),
                format!("p50 {:.1}  p95 {:.1}  p99 {:.1}", p.p50_ms, p.p95_ms, p.p99_ms),
            );
        }
        let m = &self.media;
        row(
            &mut s,
            "peer connections (connected/all)",
            format!(
                "{} / {} (failed {}, receiving {})",
                m.connected, m.peers, m.failed, m.receiving
            ),
        );
        row(
            &mut s,
            "connect time (ms)",
            format!(
                "p50 {:.1}  p95 {:.1}  p99 {:.1}",
                m.connect_time.p50_ms, m.connect_time.p95_ms, m.connect_time.p99_ms
            ),
        );
        row(
            &mut s,
            "time to first media (ms)",
            format!(
                "p50 {:.1}  p95 {:.1}  p99 {:.1}",
                m.first_media.p50_ms, m.first_media.p95_ms, m.first_media.p99_ms
            ),
        );
        row(
            &mut s,
            "media latency (ms)",
            format!(
                "p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.1}",
                m.latency.p50_ms, m.latency.p95_ms, m.latency.p99_ms, m.latency.max_ms
            ),
        );
        row(
            &mut s,
            "packets sent / received",
            format!("{} / {}", m.packets_sent, m.packets_received),
        );
        row(&mut s, "received packets/s (hold)", format!("{:.0}", m.rx_pps_hold));
        row(&mut s, "loss", format!("{:.3}% ({} packets)", m.loss_pct, m.lost));
        row(&mut s, "jitter (mean, ms)", format!("{:.2}", m.jitter_ms));
        row(
            &mut s,
            "NACKs sent / received",
            format!("{} / {}", m.nacks_sent, m.nacks_received),
        );
        row(&mut s, "keyframe requests", m.keyframe_requests.to_string());
        if self.target == "relaydesk" {
            row(
                &mut s,
                "chat sent / received",
                format!("{} / {}", self.chat_sent, self.chat_received),
            );
            if let Some(r) = &self.chat_rtt {
                row(
                    &mut s,
                    "chat round trip (ms)",
                    format!("p50 {:.1}  p99 {:.1}", r.p50_ms, r.p99_ms),
                );
            }
            row(&mut s, "MASKING VIOLATIONS", self.masking_violations.to_string());
            row(
                &mut s,
                "files ok / damaged",
                format!("{} / {}", self.files_ok, self.file_failures),
            );
        }
        let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_string(), |v| format!("{v:.2}{unit}"));
        row(
            &mut s,
            "server CPU (hold, % of a core)",
            opt(self.server.cpu_pct_hold, "%"),
        );
        row(
            &mut s,
            "server CPU µs per forwarded packet",
            opt(self.server_cpu_us_per_packet, " µs"),
        );
        row(&mut s, "server peak memory", opt(self.server.peak_rss_mib, " MiB"));
        row(&mut s, "server memory at start", opt(self.server.start_rss_mib, " MiB"));
        row(
            &mut s,
            "server memory per conversation",
            opt(self.memory_per_conversation_mib(), " MiB"),
        );
        row(
            &mut s,
            "generator CPU (hold, % of a core)",
            opt(self.generator.cpu_pct_hold, "%"),
        );
        row(
            &mut s,
            "generator send lateness p99 (ms)",
            format!("{:.2}", m.send_lateness.p99_ms),
        );
        if self.generator_bottleneck.is_empty() {
            row(&mut s, "generator bottleneck", "no".into());
        } else {
            for r in &self.generator_bottleneck {
                row(&mut s, "GENERATOR BOTTLENECK", r.clone());
            }
        }
        if let Some(soak) = &self.soak {
            for f in &soak.slopes {
                let (name, unit) = f.metric.label();
                row(
                    &mut s,
                    &format!("soak: {name}"),
                    format!(
                        "{} (slope {:+.3} {unit}/h, rise {:+.2} of at most {:.2} {unit}, {} samples)",
                        if f.flat { "flat" } else { "GROWING" },
                        f.per_hour,
                        f.rise,
                        f.allowed,
                        f.samples
                    ),
                );
            }
            if soak.slopes.is_empty() {
                row(&mut s, "SOAK", "too few samples after the warm-up to fit".into());
            }
        }
        for n in &self.nodes {
            // Summed over labels (`name{label="…"}` keys).
            let metric = |name: &str| -> f64 {
                n.metrics
                    .iter()
                    .filter(|(k, _)| *k == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
                    .fold(0.0, |a, (_, v)| a + v)
            };
            row(
                &mut s,
                &format!("node {}", n.url),
                format!(
                    "{} / {} assigned ({} failed), to assigned p50 {:.0} ms p95 {:.0} ms; {:.0} requests forwarded, {:.0} visitor sessions issued",
                    n.assigned,
                    n.started,
                    n.failed,
                    n.to_assigned.as_ref().map_or(0.0, |p| p.p50_ms),
                    n.to_assigned.as_ref().map_or(0.0, |p| p.p95_ms),
                    metric("relaydesk_cluster_forwarded_total"),
                    metric("relaydesk_visitor_tokens_issued_total"),
                ),
            );
        }
        for t in &self.thresholds {
            row(
                &mut s,
                &format!("threshold {}", t.name),
                format!(
                    "{} (limit {}, measured {:.3})",
                    if t.ok { "ok" } else { "MISSED" },
                    t.limit,
                    t.value
                ),
            );
        }
        s
    }

    /// Writes the JSON report.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json)
    }

    /// Writes the HTML chart (inline SVG, no scripts, no external resources).
    pub fn write_chart(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.chart_html())
    }

    /// The HTML chart.
    pub fn chart_html(&self) -> String {
        let t: Vec<f64> = self.timeline.iter().map(|p| p.t).collect();
        let mut html = String::new();
        let _ = write!(
            html,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>relaydesk-loadtest: {}</title>\
             <style>body{{font-family:sans-serif;margin:2em}} svg{{background:#fafafa;border:1px solid #ccc}}</style>\
             </head><body><h1>Load test: {}</h1><p>{} of {} conversations set up; latency p50 {:.2} ms, p99 {:.2} ms; loss {:.3}%.</p>",
            self.target,
            self.target,
            self.established,
            self.conversations,
            self.media.latency.p50_ms,
            self.media.latency.p99_ms,
            self.media.loss_pct
        );
        html.push_str("<h2>Media latency per second (ms)</h2>");
        html.push_str(&svg_chart(
            &t,
            &[
                ("p50", "#1f77b4", self.timeline.iter().map(|p| p.p50_ms).collect()),
                ("p99", "#d62728", self.timeline.iter().map(|p| p.p99_ms).collect()),
            ],
        ));
        html.push_str("<h2>Throughput (packets/s)</h2>");
        html.push_str(&svg_chart(
            &t,
            &[
                ("received", "#2ca02c", self.timeline.iter().map(|p| p.rx_pps).collect()),
                ("sent", "#ff7f0e", self.timeline.iter().map(|p| p.tx_pps).collect()),
            ],
        ));
        html.push_str("<h2>CPU (% of one core)</h2>");
        html.push_str(&svg_chart(
            &t,
            &[
                (
                    "generator",
                    "#9467bd",
                    self.timeline.iter().map(|p| p.generator_cpu_pct).collect(),
                ),
                (
                    "server",
                    "#8c564b",
                    self.timeline.iter().map(|p| p.server_cpu_pct.unwrap_or(0.0)).collect(),
                ),
            ],
        ));
        html.push_str("</body></html>\n");
        html
    }
}

/// A line chart as inline SVG: x = seconds, one polyline per series.
pub fn svg_chart(x: &[f64], series: &[(&str, &str, Vec<f64>)]) -> String {
    let (w, h, pad) = (760.0, 260.0, 45.0);
    let xmax = x.iter().copied().fold(1.0f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let mut s =
        format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">");
    let _ = write!(
        s,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/>",
        h - pad,
        w - 10.0,
        h - pad
    );
    let _ = write!(
        s,
        "<line x1=\"{pad}\" y1=\"10\" x2=\"{pad}\" y2=\"{}\" stroke=\"#333\"/>",
        h - pad
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let y = (h - pad) - (h - pad - 10.0) * f64::from(i) / 4.0;
        let _ = write!(s, "<text x=\"2\" y=\"{:.1}\" font-size=\"10\">{v:.1}</text>", y + 3.0);
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\">{xmax:.0} s</text>",
        w - 40.0,
        h - pad + 15.0
    );
    for (i, (name, color, ys)) in series.iter().enumerate() {
        let pts: Vec<String> = x
            .iter()
            .zip(ys)
            .filter(|(_, y)| y.is_finite())
            .map(|(xv, yv)| {
                format!(
                    "{:.1},{:.1}",
                    pad + (w - pad - 10.0) * xv / xmax,
                    (h - pad) - (h - pad - 10.0) * yv / ymax
                )
            })
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            pts.join(" ")
        );
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{color}\">{name}</text>",
            pad + 10.0 + 90.0 * i as f64,
            h - 8.0
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn report() -> Report {
        let mut r = Report {
            target: "janus".into(),
            conversations: 10,
            established: 10,
            success_pct: 100.0,
            complete: true,
            ..Default::default()
        };
        r.media.loss_pct = 0.5;
        r.media.latency = Percentiles {
            count: 100,
            p50_ms: 1.0,
            p95_ms: 2.0,
            p99_ms: 3.0,
            max_ms: 4.0,
        };
        r
    }

    #[test]
    fn thresholds_hold_and_miss() {
        let mut r = report();
        assert!(r.check(&Thresholds {
            max_loss: Some(1.0),
            max_p99_ms: Some(50.0),
            min_success: Some(99.0)
        }));
        assert!(!r.check(&Thresholds {
            max_loss: Some(0.1),
            ..Default::default()
        }));
        assert!(!r.check(&Thresholds {
            max_p99_ms: Some(2.5),
            ..Default::default()
        }));
        r.success_pct = 90.0;
        assert!(!r.check(&Thresholds {
            min_success: Some(95.0),
            ..Default::default()
        }));
        let mut r = report();
        r.masking_violations = 1;
        assert!(
            !r.check(&Thresholds::default()),
            "a masking violation always fails the run"
        );
        let mut r = report();
        r.media.latency = Percentiles::default();
        assert!(
            !r.check(&Thresholds {
                max_p99_ms: Some(50.0),
                ..Default::default()
            }),
            "no media is not a pass"
        );
    }

    #[test]
    fn memory_per_conversation_is_the_growth_over_the_conversations() {
        let mut r = report();
        assert_eq!(r.memory_per_conversation_mib(), None, "no memory figures");
        r.server.start_rss_mib = Some(30.0);
        r.server.peak_rss_mib = Some(80.0);
        assert_eq!(r.memory_per_conversation_mib(), Some(5.0));
        r.established = 0;
        assert_eq!(r.memory_per_conversation_mib(), None, "no conversation");
    }

    #[test]
    fn prometheus_samples() {
        let m = parse_metrics(
            "# HELP x\nrelaydesk_http_requests_total{class=\"ok\"} 12\nother 3\nrelaydesk_bad notanumber\n",
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m["relaydesk_http_requests_total{class=\"ok\"}"], 12.0);
    }

    #[test]
    fn outputs() {
        let mut r = report();
        r.timeline = vec![
            Point {
                t: 1.0,
                p50_ms: 1.0,
                p99_ms: 2.0,
                rx_pps: 100.0,
                ..Default::default()
            },
            Point {
                t: 2.0,
                ..Default::default()
            },
        ];
        r.check(&Thresholds {
            max_loss: Some(0.1),
            ..Default::default()
        });
        r.server.start_rss_mib = Some(20.0);
        r.server.peak_rss_mib = Some(45.0);
        let table = r.table();
        assert!(table.contains("MISSED"), "{table}");
        assert!(table.contains("server memory per conversation     2.50 MiB"), "{table}");
        let html = r.chart_html();
        assert!(html.contains("<svg") && html.contains("polyline"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        r.write_json(&p).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["media"]["loss_pct"], 0.5);
        assert_eq!(v["thresholds"][0]["ok"], false);
    }
}
