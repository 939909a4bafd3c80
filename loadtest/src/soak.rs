//! Soak figures: the server's memory, file descriptors, threads and p99 latencies sampled at a fixed
//! interval through a long run, the least-squares slope of each, and whether each stayed flat.
//!
//! "Flat" is a stated bound on the rise of the fitted line over the fitted window (slope × window
//! length): a leak of any size shows as a rise that grows with the run, noise as one that does not.
//! The bounds ([`Bound::for_metric`]) are absolute floors (what a busy shared machine moves by itself) or
//! a fraction of the metric's mean, whichever is larger. A rise past the bound counts as growth only when
//! it is also clear of the noise (its ~95% interval, two standard errors, lies above the bound). The fit leaves out the samples taken during the
//! warm-up (see [`analyse`]): until every conversation slot has turned over once, the server is still
//! growing to its working size, which is not a leak.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One sample of the server, taken at the end of one interval of the hold phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Sample {
    /// Minutes since the hold phase began.
    pub t_min: f64,
    /// Conversations set up so far (cumulative: with churn it keeps growing).
    pub established: u64,
    /// Resident memory (MiB).
    pub rss_mib: Option<f64>,
    /// Open file descriptors.
    pub fds: Option<f64>,
    /// Threads.
    pub threads: Option<f64>,
    /// p99 of the media latency of the packets received in this interval (ms).
    pub media_p99_ms: Option<f64>,
    /// p99 of the chat round trips completed in this interval (ms).
    pub chat_p99_ms: Option<f64>,
    /// The machine's one-minute load average (not fitted: it says how busy the shared cores were).
    pub loadavg: Option<f64>,
}

/// The metrics a soak fits, in report order.
pub const METRICS: [Metric; 5] = [
    Metric::RssMib,
    Metric::Fds,
    Metric::Threads,
    Metric::MediaP99Ms,
    Metric::ChatP99Ms,
];

/// One sampled metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Resident memory.
    RssMib,
    /// Open file descriptors.
    Fds,
    /// Threads.
    Threads,
    /// Media latency p99 per interval.
    MediaP99Ms,
    /// Chat round trip p99 per interval.
    ChatP99Ms,
}

impl Metric {
    /// Name and unit for tables and plots.
    pub fn label(self) -> (&'static str, &'static str) {
        match self {
            Metric::RssMib => ("server memory (RSS)", "MiB"),
            Metric::Fds => ("server file descriptors", "fds"),
            Metric::Threads => ("server threads", "threads"),
            Metric::MediaP99Ms => ("media latency p99", "ms"),
            Metric::ChatP99Ms => ("chat round trip p99", "ms"),
        }
    }

    fn of(self, s: &Sample) -> Option<f64> {
        match self {
            Metric::RssMib => s.rss_mib,
            Metric::Fds => s.fds,
            Metric::Threads => s.threads,
            Metric::MediaP99Ms => s.media_p99_ms,
            Metric::ChatP99Ms => s.chat_p99_ms,
        }
    }
}

/// The bound on a metric's fitted rise over the window: `max(floor, fraction × mean)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    /// Absolute floor, in the metric's unit.
    pub floor: f64,
    /// Fraction of the metric's mean over the window.
    pub fraction: f64,
}

impl Bound {
    /// The stated bound of each metric:
    /// - memory: 8 MiB or 5% of the mean (allocator arenas and caches move by a few MiB by themselves);
    /// - file descriptors: 4 or 5% (conversations being set up or torn down at the sampling instant hold a
    ///   few sockets each);
    /// - threads: 4 or 10% (the blocking pool starts and retires threads as store calls come and go);
    /// - p99 latencies: 5 ms or 50% of the mean (a shared machine's scheduling moves a tail by that much;
    ///   a server that slows down as it ages rises past it).
    pub fn for_metric(m: Metric) -> Bound {
        match m {
            Metric::RssMib => Bound {
                floor: 8.0,
                fraction: 0.05,
            },
            Metric::Fds => Bound {
                floor: 4.0,
                fraction: 0.05,
            },
            Metric::Threads => Bound {
                floor: 4.0,
                fraction: 0.10,
            },
            Metric::MediaP99Ms | Metric::ChatP99Ms => Bound {
                floor: 5.0,
                fraction: 0.5,
            },
        }
    }

    /// The allowed rise for a metric whose mean is `mean`.
    pub fn allowed(self, mean: f64) -> f64 {
        self.floor.max(self.fraction * mean.abs())
    }
}

/// The fit of one metric.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Slope {
    /// The metric.
    pub metric: Metric,
    /// Samples in the fit.
    pub samples: usize,
    /// Mean over the fitted window.
    pub mean: f64,
    /// Least-squares slope, in the metric's unit per hour.
    pub per_hour: f64,
    /// Intercept of the fitted line at `t_min = 0`.
    pub intercept: f64,
    /// Rise of the fitted line over the window (slope × window length).
    pub rise: f64,
    /// Standard error of that rise (the slope's standard error × window length), from the residuals.
    #[serde(default)]
    pub rise_stderr: f64,
    /// The allowed rise (the bound).
    pub allowed: f64,
    /// Whether the metric stayed flat: the rise is within the bound, or at least the lower end of its
    /// ~95% interval (`rise − 2 × rise_stderr`) is, so that noise alone never counts as growth. A steady
    /// leak has small residuals and fails as soon as it rises past the bound.
    pub flat: bool,
}

/// The soak part of a report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SoakFigures {
    /// Seconds between samples.
    pub interval_secs: f64,
    /// Minutes of warm-up left out of the fit.
    pub warmup_min: f64,
    /// Every sample, warm-up included.
    pub samples: Vec<Sample>,
    /// One fit per metric that has at least three samples after the warm-up.
    pub slopes: Vec<Slope>,
    /// Whether every fitted metric stayed within its bound (false when nothing could be fitted).
    pub flat: bool,
}

/// Least-squares line through `(x, y)`: `(slope, intercept)`; `None` for fewer than two distinct `x`.
pub fn least_squares(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= f64::EPSILON {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}

/// Standard error of the least-squares slope of `points` under the line `(slope, intercept)`.
fn slope_stderr(points: &[(f64, f64)], slope: f64, intercept: f64) -> f64 {
    let n = points.len();
    if n < 3 {
        return f64::INFINITY;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let rss: f64 = points.iter().map(|p| (p.1 - (intercept + slope * p.0)).powi(2)).sum();
    if sxx <= f64::EPSILON {
        return f64::INFINITY;
    }
    (rss / (n - 2) as f64 / sxx).sqrt()
}

/// Fits every metric over the samples taken after `warmup_min` and checks each against its bound.
pub fn analyse(interval_secs: f64, warmup_min: f64, samples: Vec<Sample>) -> SoakFigures {
    let mut slopes = Vec::new();
    for m in METRICS {
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.t_min > warmup_min)
            .filter_map(|s| m.of(s).filter(|v| v.is_finite()).map(|v| (s.t_min, v)))
            .collect();
        if points.len() < 3 {
            continue;
        }
        let Some((slope, intercept)) = least_squares(&points) else {
            continue;
        };
        let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
        let span = points.last().map_or(0.0, |p| p.0) - points.first().map_or(0.0, |p| p.0);
        let rise = slope * span;
        let rise_stderr = slope_stderr(&points, slope, intercept) * span;
        let allowed = Bound::for_metric(m).allowed(mean);
        slopes.push(Slope {
            metric: m,
            samples: points.len(),
            mean,
            per_hour: slope * 60.0,
            intercept,
            rise,
            rise_stderr,
            allowed,
            flat: rise <= allowed || rise - 2.0 * rise_stderr <= allowed,
        });
    }
    let flat = !slopes.is_empty() && slopes.iter().all(|s| s.flat);
    SoakFigures {
        interval_secs,
        warmup_min,
        samples,
        slopes,
        flat,
    }
}

impl SoakFigures {
    /// A Markdown table of the fits.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| metric | samples fitted | mean | slope per hour | fitted rise over the window (± std. error) | bound | flat |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|");
        for f in &self.slopes {
            let (name, unit) = f.metric.label();
            let _ = writeln!(
                s,
                "| {name} | {} | {:.2} {unit} | {:+.3} {unit}/h | {:+.3} ± {:.3} {unit} | {:.2} {unit} | {} |",
                f.samples,
                f.mean,
                f.per_hour,
                f.rise,
                f.rise_stderr,
                f.allowed,
                if f.flat { "yes" } else { "**no**" }
            );
        }
        s
    }

    /// The samples as CSV (`t_min,established,rss_mib,fds,threads,media_p99_ms,chat_p99_ms,loadavg`).
    pub fn csv(&self) -> String {
        let mut s = String::from("t_min,established,rss_mib,fds,threads,media_p99_ms,chat_p99_ms,loadavg\n");
        let o = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
        for x in &self.samples {
            let _ = writeln!(
                s,
                "{:.3},{},{},{},{},{},{},{}",
                x.t_min,
                x.established,
                o(x.rss_mib),
                o(x.fds),
                o(x.threads),
                o(x.media_p99_ms),
                o(x.chat_p99_ms),
                o(x.loadavg)
            );
        }
        s
    }

    /// A self-contained SVG: one panel per metric, the samples as a line with dots, the fitted line
    /// dashed over the fitted window, the warm-up shaded, and the slope and verdict in each title.
    pub fn svg(&self, title: &str) -> String {
        const W: f64 = 760.0;
        const PANEL: f64 = 150.0;
        const LEFT: f64 = 70.0;
        const RIGHT: f64 = 20.0;
        const TOP: f64 = 40.0;
        let plot_w = W - LEFT - RIGHT;
        let h = TOP + PANEL * METRICS.len() as f64 + 30.0;
        let t_max = self.samples.iter().map(|s| s.t_min).fold(0.0f64, f64::max).max(1e-3);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#,
            xml_escape(title)
        );
        for (i, m) in METRICS.iter().enumerate() {
            let y0 = TOP + PANEL * i as f64;
            let ph = PANEL - 45.0;
            let (name, unit) = m.label();
            let pts: Vec<(f64, f64)> = self
                .samples
                .iter()
                .filter_map(|x| m.of(x).filter(|v| v.is_finite()).map(|v| (x.t_min, v)))
                .collect();
            let fit = self.slopes.iter().find(|f| f.metric == *m);
            let head = match fit {
                Some(f) => format!(
                    "{name}: slope {:+.3} {unit}/h, fitted rise {:+.2} {unit} (bound {:.2}) — {}",
                    f.per_hour,
                    f.rise,
                    f.allowed,
                    if !f.flat {
                        "NOT FLAT"
                    } else if f.rise > f.allowed {
                        "flat within the noise (rise − 2 std. errors ≤ bound)"
                    } else {
                        "flat"
                    }
                ),
                None => format!("{name}: too few samples to fit"),
            };
            let _ = writeln!(
                s,
                r#"<text x="{LEFT}" y="{:.1}" font-weight="bold">{}</text>"#,
                y0 + 12.0,
                xml_escape(&head)
            );
            let top = y0 + 20.0;
            let (mut lo, mut hi) = pts
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
            if !lo.is_finite() {
                (lo, hi) = (0.0, 1.0);
            }
            if hi - lo < 1e-9 {
                hi = lo + 1.0;
            }
            let pad = (hi - lo) * 0.1;
            let (lo, hi) = ((lo - pad).max(0.0), hi + pad);
            let x = |t: f64| LEFT + t / t_max * plot_w;
            let y = |v: f64| top + ph - (v - lo) / (hi - lo) * ph;
            // Warm-up shaded.
            if self.warmup_min > 0.0 {
                let _ = writeln!(
                    s,
                    r##"<rect x="{LEFT}" y="{top:.1}" width="{:.1}" height="{ph:.1}" fill="#eeeeee"/>"##,
                    (x(self.warmup_min.min(t_max)) - LEFT).max(0.0)
                );
            }
            let _ = writeln!(
                s,
                r##"<rect x="{LEFT}" y="{top:.1}" width="{plot_w:.1}" height="{ph:.1}" fill="none" stroke="#999999"/>"##
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{hi:.1}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{lo:.1}</text>"#,
                LEFT - 4.0,
                top + 10.0,
                LEFT - 4.0,
                top + ph
            );
            let _ = writeln!(
                s,
                r#"<text x="{LEFT}" y="{:.1}">0 min</text><text x="{:.1}" y="{:.1}" text-anchor="end">{t_max:.1} min</text>"#,
                top + ph + 13.0,
                LEFT + plot_w,
                top + ph + 13.0
            );
            if !pts.is_empty() {
                let line: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1))).collect();
                let _ = writeln!(
                    s,
                    r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##,
                    line.join(" ")
                );
                for p in &pts {
                    let _ = writeln!(
                        s,
                        r##"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="#1f77b4"/>"##,
                        x(p.0),
                        y(p.1)
                    );
                }
            }
            if let Some(f) = fit {
                let a = self.warmup_min.max(pts.first().map_or(0.0, |p| p.0));
                let b = pts.last().map_or(t_max, |p| p.0);
                let at = |t: f64| f.intercept + f.per_hour / 60.0 * t;
                let _ = writeln!(
                    s,
                    r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="1.5" stroke-dasharray="5,3"/>"##,
                    x(a),
                    y(at(a).clamp(lo, hi)),
                    x(b),
                    y(at(b).clamp(lo, hi)),
                    if f.flat { "#2ca02c" } else { "#d62728" }
                );
            }
        }
        let loads: Vec<f64> = self.samples.iter().filter_map(|x| x.loadavg).collect();
        let load = if loads.is_empty() {
            String::new()
        } else {
            format!(
                "; machine load average {:.1}–{:.1}",
                loads.iter().copied().fold(f64::INFINITY, f64::min),
                loads.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            )
        };
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{:.1}" fill="#666666">grey: warm-up, not fitted; dashed: least-squares line over the fitted window{load}</text>"##,
            h - 10.0
        );
        s.push_str("</svg>\n");
        s
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(t: f64, rss: f64) -> Sample {
        Sample {
            t_min: t,
            established: 10,
            rss_mib: Some(rss),
            fds: Some(40.0),
            threads: Some(12.0),
            media_p99_ms: Some(3.0),
            chat_p99_ms: None,
            loadavg: None,
        }
    }

    #[test]
    fn least_squares_recovers_a_line() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), 2.5 * f64::from(i) + 7.0)).collect();
        let (m, b) = least_squares(&pts).unwrap();
        assert!((m - 2.5).abs() < 1e-9 && (b - 7.0).abs() < 1e-9, "{m} {b}");
        assert_eq!(least_squares(&[(1.0, 1.0)]), None);
        assert_eq!(least_squares(&[(1.0, 1.0), (1.0, 3.0)]), None, "one x only");
    }

    #[test]
    fn a_steady_leak_is_not_flat_and_noise_is() {
        // 100 MiB with ±3 MiB of noise for 30 minutes: flat.
        let noisy: Vec<Sample> = (1..=30)
            .map(|i| sample(f64::from(i), 100.0 + if i % 2 == 0 { 3.0 } else { -3.0 }))
            .collect();
        let f = analyse(60.0, 2.0, noisy);
        let rss = f.slopes.iter().find(|s| s.metric == Metric::RssMib).unwrap();
        assert!(rss.flat && f.flat, "{}", f.table());
        assert_eq!(rss.samples, 28, "the warm-up samples are left out");
        // Chat has no samples: no fit for it, and that alone does not make the run fail.
        assert!(f.slopes.iter().all(|s| s.metric != Metric::ChatP99Ms));
        // 0.5 MiB a minute from 100 MiB: 14 MiB over the window, above max(8, 5% of ~107).
        let leak: Vec<Sample> = (1..=30)
            .map(|i| sample(f64::from(i), 100.0 + 0.5 * f64::from(i)))
            .collect();
        let f = analyse(60.0, 2.0, leak);
        let rss = f.slopes.iter().find(|s| s.metric == Metric::RssMib).unwrap();
        assert!(!rss.flat && !f.flat, "{}", f.table());
        assert!((rss.per_hour - 30.0).abs() < 1e-6, "{}", rss.per_hour);
        // The same leak under ±3 MiB of noise is still growth.
        let noisy_leak: Vec<Sample> = (1..=30)
            .map(|i| {
                sample(
                    f64::from(i),
                    100.0 + 0.5 * f64::from(i) + if i % 2 == 0 { 3.0 } else { -3.0 },
                )
            })
            .collect();
        assert!(!analyse(60.0, 2.0, noisy_leak).flat);
        // Few samples and large noise: a rise past the bound that the noise explains is not growth.
        let jumpy: Vec<Sample> = [100.0, 130.0, 95.0, 120.0, 90.0, 140.0, 100.0, 125.0]
            .iter()
            .enumerate()
            .map(|(i, v)| sample(i as f64 + 1.0, *v))
            .collect();
        let f = analyse(60.0, 0.0, jumpy);
        let rss = f.slopes.iter().find(|s| s.metric == Metric::RssMib).unwrap();
        assert!(rss.rise > rss.allowed && rss.flat, "{}", f.table());
        // The warm-up's growth is not counted.
        let warm: Vec<Sample> = (1..=30)
            .map(|i| sample(f64::from(i), if i <= 3 { 30.0 * f64::from(i) - 20.0 } else { 100.0 }))
            .collect();
        assert!(analyse(60.0, 3.0, warm.clone()).flat);
        assert!(!analyse(60.0, 0.0, warm).flat);
    }

    #[test]
    fn nothing_fitted_is_not_flat_and_the_outputs_hold_every_sample() {
        let f = analyse(60.0, 0.0, vec![sample(1.0, 10.0), sample(2.0, 11.0)]);
        assert!(f.slopes.is_empty() && !f.flat);
        let f = analyse(60.0, 0.0, (1..=5).map(|i| sample(f64::from(i), 10.0)).collect());
        assert_eq!(f.csv().lines().count(), 6);
        let svg = f.svg("soak <test>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("soak &lt;test&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 4, "chat has no samples");
    }
}
