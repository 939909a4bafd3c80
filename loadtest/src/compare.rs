//! `relaydesk-loadtest compare`: the side-by-side table of reports from several targets and sizes (used by
//! `cargo xtask compare-janus`), with RelayDesk/Janus ratios and a chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::report::{Report, svg_chart};

/// Errors of the comparison.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompareError {
    /// A report could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A report is not valid JSON of a report.
    #[error("{path} is not a load test report: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Loads reports from files.
pub fn load(paths: &[impl AsRef<Path>]) -> Result<Vec<Report>, CompareError> {
    paths
        .iter()
        .map(|p| {
            let p = p.as_ref();
            let b = std::fs::read(p).map_err(|source| CompareError::Read {
                path: p.display().to_string(),
                source,
            })?;
            serde_json::from_slice(&b).map_err(|e| CompareError::Parse {
                path: p.display().to_string(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Whether a report held the thresholds: every conversation set up, loss and p99 within limits, complete.
pub fn held(r: &Report, max_loss: f64, max_p99_ms: f64) -> bool {
    r.complete
        && r.established == u64::from(r.conversations)
        && r.media.packets_received > 0
        && r.media.loss_pct <= max_loss
        && r.media.latency.p99_ms <= max_p99_ms
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    }
}

/// The Markdown table: one row per (size, target), then the ratios per size and the largest sizes held.
pub fn table(reports: &[Report], max_loss: f64, max_p99_ms: f64) -> String {
    let mut by_size: BTreeMap<u32, BTreeMap<String, &Report>> = BTreeMap::new();
    for r in reports {
        by_size.entry(r.conversations).or_default().insert(r.target.clone(), r);
    }
    let mut s = String::new();
    s.push_str("| conversations | target | set up | server CPU µs / forwarded packet | egress packets/s | p50 ms | p99 ms | loss % | server CPU % | peak memory MiB | memory per conversation MiB | generator lateness p99 ms | held |\n");
    s.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (n, targets) in &by_size {
        for (t, r) in targets {
            let _ = writeln!(
                s,
                "| {n} | {t} | {}/{} | {} | {:.0} | {:.2} | {:.2} | {:.3} | {} | {} | {} | {:.2} | {} |",
                r.established,
                r.conversations,
                fmt_opt(r.server_cpu_us_per_packet, 1),
                r.media.rx_pps_hold,
                r.media.latency.p50_ms,
                r.media.latency.p99_ms,
                r.media.loss_pct,
                fmt_opt(r.server.cpu_pct_hold, 1),
                fmt_opt(r.server.peak_rss_mib, 1),
                fmt_opt(r.memory_per_conversation_mib(), 2),
                r.media.send_lateness.p99_ms,
                if held(r, max_loss, max_p99_ms) { "yes" } else { "no" },
            );
        }
    }
    s.push_str("\nRatios RelayDesk / Janus (below 1: RelayDesk better, except egress where equal is expected):\n\n");
    s.push_str(
        "| conversations | RelayDesk variant | CPU per packet | egress packets/s | p50 | p99 | peak memory |
|---:|---|---:|---:|---:|---:|---:|
",
    );
    for (n, targets) in &by_size {
        let jn = targets.get("janus").copied();
        for (t, a) in targets.iter().filter(|(t, _)| t.starts_with("relaydesk")) {
            let Some(b) = jn else { continue };
            let _ = writeln!(
                s,
                "| {n} | {t} | {} | {} | {} | {} | {} |",
                ratio(a.server_cpu_us_per_packet, b.server_cpu_us_per_packet),
                ratio(Some(a.media.rx_pps_hold), Some(b.media.rx_pps_hold)),
                ratio(Some(a.media.latency.p50_ms), Some(b.media.latency.p50_ms)),
                ratio(Some(a.media.latency.p99_ms), Some(b.media.latency.p99_ms)),
                ratio(a.server.peak_rss_mib, b.server.peak_rss_mib),
            );
        }
    }
    let mut max_held: BTreeMap<String, u32> = BTreeMap::new();
    for r in reports {
        let e = max_held.entry(r.target.clone()).or_insert(0);
        if held(r, max_loss, max_p99_ms) {
            *e = (*e).max(r.conversations);
        }
    }
    let _ = writeln!(
        s,
        "\nLargest size that held (all set up, loss ≤ {max_loss}%, p99 ≤ {max_p99_ms} ms):\n"
    );
    for (t, n) in &max_held {
        let _ = writeln!(s, "- {t}: {} conversations ({} media participants)", n, n * 2);
    }
    s
}

/// The HTML chart: CPU per packet and p99 latency against size, per target.
pub fn chart(reports: &[Report]) -> String {
    let mut targets: BTreeMap<String, Vec<&Report>> = BTreeMap::new();
    for r in reports {
        targets.entry(r.target.clone()).or_default().push(r);
    }
    let mut sizes: Vec<f64> = reports.iter().map(|r| f64::from(r.conversations)).collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    let colors = ["#d62728", "#1f77b4", "#2ca02c"];
    let series = |f: &dyn Fn(&Report) -> f64| -> Vec<(String, &str, Vec<f64>)> {
        targets
            .iter()
            .enumerate()
            .map(|(i, (t, rs))| {
                let ys = sizes
                    .iter()
                    .map(|n| {
                        rs.iter()
                            .find(|r| f64::from(r.conversations) == *n)
                            .map_or(f64::NAN, |r| f(r))
                    })
                    .collect();
                (t.clone(), colors[i % colors.len()], ys)
            })
            .collect()
    };
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>RelayDesk vs Janus</title>\
         <style>body{font-family:sans-serif;margin:2em} svg{background:#fafafa;border:1px solid #ccc}</style></head><body>\
         <h1>RelayDesk vs Janus: the same media load</h1><p>x axis: concurrent conversations (two media participants each).</p>",
    );
    for (title, f) in [
        (
            "Server CPU µs per forwarded packet",
            &(|r: &Report| r.server_cpu_us_per_packet.unwrap_or(f64::NAN)) as &dyn Fn(&Report) -> f64,
        ),
        ("p99 latency (ms)", &|r: &Report| r.media.latency.p99_ms),
        ("Egress packets/s", &|r: &Report| r.media.rx_pps_hold),
    ] {
        let _ = write!(html, "<h2>{title}</h2>");
        let ser = series(f);
        let borrowed: Vec<(&str, &str, Vec<f64>)> = ser.iter().map(|(a, b, c)| (a.as_str(), *b, c.clone())).collect();
        html.push_str(&svg_chart(&sizes, &borrowed));
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn r(target: &str, n: u32, cpu: f64, p99: f64) -> Report {
        let mut r = Report {
            target: target.into(),
            conversations: n,
            established: u64::from(n),
            complete: true,
            ..Default::default()
        };
        r.server_cpu_us_per_packet = Some(cpu);
        r.media.latency.p99_ms = p99;
        r.media.packets_received = 1000;
        r.media.rx_pps_hold = 100.0 * f64::from(n);
        r
    }

    #[test]
    fn table_with_ratios_and_largest_held_size() {
        let rs = vec![
            r("janus", 5, 30.0, 3.0),
            r("relaydesk-sfu", 5, 10.0, 2.0),
            r("janus", 10, 30.0, 80.0),
            r("relaydesk-sfu", 10, 12.0, 4.0),
        ];
        let t = table(&rs, 1.0, 50.0);
        assert!(t.contains("| 5 | relaydesk-sfu | 0.33 | 1.00 |"), "{t}");
        assert!(t.contains("- janus: 5 conversations"), "{t}");
        assert!(t.contains("- relaydesk-sfu: 10 conversations"), "{t}");
        assert!(chart(&rs).contains("<svg"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        rs[0].write_json(&p).unwrap();
        assert_eq!(load(&[&p]).unwrap()[0].conversations, 5);
        std::fs::write(&p, "{").unwrap();
        assert!(load(&[&p]).is_err());
    }
}
