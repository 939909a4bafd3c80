//! The run: preflight, ramp, hold, live progress, final report.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::media::{MediaConfig, MediaEngine, MediaSnapshot};
use crate::report::{MediaFigures, Percentiles, Point, ProcessFigures, Report};
use crate::sys::{self, CpuSampler};
use crate::target::{Ctx, Signalling, StageFailure, Target};

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Conversations.
    pub conversations: u32,
    /// New conversations per second.
    pub ramp: f64,
    /// Hold after the ramp.
    pub duration: Duration,
    /// Media.
    pub media: MediaConfig,
    /// Generator shard threads (0: one per core).
    pub shards: usize,
    /// Server process id for CPU and memory.
    pub server_pid: Option<u32>,
    /// Live progress display.
    pub progress: bool,
    /// Churn: each conversation lasts this long, then ends and a new one takes its place (until the run
    /// ends). `None`: conversations last the whole run.
    pub lifetime: Option<Duration>,
    /// Soak sampling: the server's memory, file descriptors, threads and the p99 latencies every this
    /// often through the hold phase, fitted and checked for growth (see [`crate::soak`]).
    pub sample_every: Option<Duration>,
    /// Soak: the start of the hold phase left out of the fit.
    pub warmup: Duration,
}

/// Why a run could not start or was cut short. The report (partial) is still produced when possible.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The target is unreachable or refused the credentials before the run.
    #[error("{0}")]
    Preflight(String),
    /// The media engine could not start.
    #[error("media engine: {0}")]
    Media(#[from] crate::media::MediaError),
}

/// Runs `plan` against `target`. Returns the report; `report.complete` is false when the server died or
/// went unreachable mid-run (the figures up to then are kept).
pub async fn run<T: Target + 'static>(target: Arc<T>, plan: Plan) -> Result<Report, RunError> {
    // Before the preflight: its setup (the agents' logins) is part of what the conversations cost.
    let start_rss = plan.server_pid.and_then(sys::rss_mib);
    target.preflight().await.map_err(RunError::Preflight)?;
    eprintln!(
        "relaydesk-loadtest: {} ready; starting {} conversations at {}/s, then holding {:?}",
        target.name(),
        plan.conversations,
        plan.ramp,
        plan.duration
    );
    let shards = if plan.shards == 0 { sys::cpus() } else { plan.shards };
    let engine = Arc::new(MediaEngine::start(shards, plan.media)?);
    let signalling = Arc::new(Mutex::new(Signalling::default()));
    let established = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ctx = Ctx {
        engine: engine.clone(),
        signalling: signalling.clone(),
        established: established.clone(),
        audio: plan.media.audio,
        video: plan.media.video,
        stop: stop_rx,
        until: None,
    };
    let attempts = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();

    let start = Instant::now();
    let ramp_secs = f64::from(plan.conversations) / plan.ramp;
    let ramp_end = start + Duration::from_secs_f64(ramp_secs);
    let end = ramp_end + plan.duration;

    // The launcher: one task per conversation, started at the ramp rate.
    let mut tasks = tokio::task::JoinSet::new();
    let launcher = {
        let target = target.clone();
        let ctx = ctx.clone();
        let failures = failures.clone();
        let attempts = attempts.clone();
        let n = plan.conversations;
        let rate = plan.ramp;
        let lifetime = plan.lifetime;
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..n {
                let at = start + Duration::from_secs_f64(f64::from(i) / rate);
                tokio::time::sleep_until(at.into()).await;
                let target = target.clone();
                let ctx = ctx.clone();
                let failures = failures.clone();
                let attempts = attempts.clone();
                set.spawn(async move {
                    // One place of the load: one conversation, or with churn one after another until the end.
                    for round in 0u64.. {
                        let index = u64::from(i) + round * u64::from(n);
                        let mut c = ctx.clone();
                        c.until = lifetime.map(|l| tokio::time::Instant::now() + l);
                        attempts.fetch_add(1, Ordering::Relaxed);
                        let failed = target.conversation(index, &c).await.err();
                        if let Some(StageFailure { stage, reason }) = &failed {
                            tracing::debug!(stage, %reason, conversation = index, "conversation failed");
                            *failures
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(format!("{stage}: {reason}"))
                                .or_default() += 1;
                        }
                        if lifetime.is_none() || *ctx.stop.borrow() {
                            break;
                        }
                        if failed.is_some() {
                            // Not a tight loop against a server that refuses: wait a little, or for the end.
                            let mut stop = ctx.stop.clone();
                            let _ = tokio::time::timeout(Duration::from_secs(1), stop.wait_for(|s| *s)).await;
                            if *ctx.stop.borrow() {
                                break;
                            }
                        }
                    }
                });
            }
            while set.join_next().await.is_some() {}
        })
    };
    tasks.spawn(async move {
        let _ = launcher.await;
    });

    // Monitor: once per second, sample everything; detect a dead server.
    let pb = if plan.progress {
        let pb = ProgressBar::with_draw_target(Some(u64::from(plan.conversations)), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:25}] {pos}/{len} conv  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(pb)
    } else {
        None
    };
    let tty = std::io::stderr().is_terminal();
    let mut gen_cpu = CpuSampler::new(None);
    let mut srv_cpu = plan.server_pid.map(|p| CpuSampler::new(Some(p)));
    let gen_cpu0 = sys::cpu_seconds(None);
    let srv_cpu0 = plan.server_pid.and_then(|p| sys::cpu_seconds(Some(p)));
    let mut hold_marks: Option<(Instant, Option<f64>, Option<f64>, u64)> = None;
    let mut machine0: Option<(u64, u64)> = None;
    let mut timeline: Vec<Point> = Vec::new();
    let mut prev = engine.snapshot();
    let mut prev_t = Instant::now();
    let mut peak_rss: Option<f64> = start_rss;
    let mut dead_probes = 0u32;
    let mut aborted: Option<String> = None;
    let mut last_line = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    // Soak sampling: from the start of the hold, every `sample_every`.
    let mut samples: Vec<crate::soak::Sample> = Vec::new();
    let mut next_sample: Option<Instant> = None;
    let mut sample_marks: Option<(hdrhistogram::Histogram<u64>, Option<hdrhistogram::Histogram<u64>>)> = None;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let snap = engine.snapshot();
        let dt = now.duration_since(prev_t).as_secs_f64().max(1e-3);
        let mut interval = snap.latency.clone();
        let _ = interval.subtract(&prev.latency);
        let g = gen_cpu.sample().unwrap_or(0.0);
        let s = srv_cpu.as_mut().and_then(|c| c.sample());
        let rss = plan.server_pid.and_then(sys::rss_mib);
        if let Some(r) = rss {
            peak_rss = Some(peak_rss.map_or(r, |p: f64| p.max(r)));
        }
        let est = established.load(Ordering::Relaxed);
        let point = Point {
            t: now.duration_since(start).as_secs_f64(),
            established: est,
            rx_pps: (snap.packets_received - prev.packets_received) as f64 / dt,
            tx_pps: (snap.packets_sent - prev.packets_sent) as f64 / dt,
            p50_ms: crate::stats::percentile_ms(&interval, 50.0),
            p99_ms: crate::stats::percentile_ms(&interval, 99.0),
            loss_pct: snap.loss_fraction() * 100.0,
            generator_cpu_pct: g,
            server_cpu_pct: s,
            server_rss_mib: rss,
        };
        let failed: u64 = failures.lock().unwrap_or_else(|p| p.into_inner()).values().sum();
        let msg = format!(
            "ok {est} fail {failed} | peers {}/{} | rx {:.0}/s | p50 {:.1} p99 {:.1} ms | loss {:.2}% | gen CPU {:.0}%{}",
            snap.connected,
            snap.peers,
            point.rx_pps,
            point.p50_ms,
            point.p99_ms,
            point.loss_pct,
            g,
            s.map_or(String::new(), |s| format!(" | server CPU {s:.0}%"))
        );
        if let Some(pb) = &pb {
            pb.set_position(est + failed);
            pb.set_message(msg.clone());
            if !tty && now.duration_since(last_line) >= Duration::from_secs(5) {
                eprintln!("[{:>5.0}s] {msg}", point.t);
                last_line = now;
            }
        }
        timeline.push(point);
        prev = snap;
        prev_t = now;
        if let (Some(every), Some(at), Some(hold)) = (plan.sample_every, next_sample, hold_marks.as_ref())
            && now >= at
        {
            let chat = signalling.lock().unwrap_or_else(|p| p.into_inner()).chat_rtt.clone();
            let (media0, chat0) = sample_marks
                .take()
                .unwrap_or_else(|| (crate::stats::new_histogram(), None));
            let mut media = prev.latency.clone();
            let _ = media.subtract(&media0);
            let chat_p99 = chat.as_ref().and_then(|c| {
                let mut c = c.clone();
                if let Some(c0) = &chat0 {
                    let _ = c.subtract(c0);
                }
                (!c.is_empty()).then(|| crate::stats::percentile_ms(&c, 99.0))
            });
            samples.push(crate::soak::Sample {
                t_min: now.duration_since(hold.0).as_secs_f64() / 60.0,
                established: est,
                rss_mib: rss,
                fds: plan.server_pid.and_then(sys::fd_count).map(|v| v as f64),
                threads: plan.server_pid.and_then(sys::threads).map(|v| v as f64),
                media_p99_ms: (!media.is_empty()).then(|| crate::stats::percentile_ms(&media, 99.0)),
                chat_p99_ms: chat_p99,
                loadavg: sys::loadavg(),
            });
            sample_marks = Some((prev.latency.clone(), chat));
            next_sample = Some(at + every);
        }
        if hold_marks.is_none() && now >= ramp_end {
            next_sample = plan.sample_every.map(|every| now + every);
            sample_marks = Some((
                prev.latency.clone(),
                signalling.lock().unwrap_or_else(|p| p.into_inner()).chat_rtt.clone(),
            ));
            machine0 = sys::machine_cpu();
            hold_marks = Some((
                now,
                sys::cpu_seconds(None),
                plan.server_pid.and_then(|p| sys::cpu_seconds(Some(p))),
                prev.packets_received,
            ));
        }
        // Is the server still there?
        let pid_dead = plan.server_pid.is_some_and(|p| !sys::alive(p));
        if pid_dead || !target.alive().await {
            dead_probes += 1;
            if pid_dead || dead_probes >= 3 {
                aborted = Some(if pid_dead {
                    "the server process exited during the run".into()
                } else {
                    "the server stopped answering during the run".into()
                });
                break;
            }
        } else {
            dead_probes = 0;
        }
        if now >= end {
            break;
        }
    }
    // Stop sending first so the figures are final, then end the conversations.
    let final_snap = engine.stop();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    let soak = plan
        .sample_every
        .map(|every| crate::soak::analyse(every.as_secs_f64(), plan.warmup.as_secs_f64() / 60.0, samples));
    let mut report = build(
        &plan,
        target.name(),
        final_snap,
        &signalling,
        &failures,
        &established,
        timeline,
        hold_marks,
        gen_cpu0,
        srv_cpu0,
        (start_rss, peak_rss),
        aborted,
        ramp_secs,
        machine0,
    );
    report.soak = soak;
    report.attempts = attempts.load(Ordering::Relaxed);
    if report.attempts > 0 {
        report.success_pct = report.established as f64 * 100.0 / report.attempts as f64;
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn build(
    plan: &Plan,
    name: &str,
    snap: MediaSnapshot,
    signalling: &Mutex<Signalling>,
    failures: &Mutex<BTreeMap<String, u64>>,
    established: &AtomicU64,
    timeline: Vec<Point>,
    hold: Option<(Instant, Option<f64>, Option<f64>, u64)>,
    gen_cpu0: Option<f64>,
    srv_cpu0: Option<f64>,
    (start_rss, peak_rss): (Option<f64>, Option<f64>),
    aborted: Option<String>,
    ramp_secs: f64,
    machine0: Option<(u64, u64)>,
) -> Report {
    let sig = signalling.lock().unwrap_or_else(|p| p.into_inner());
    let est = established.load(Ordering::Relaxed);
    let now = Instant::now();
    let gen_now = sys::cpu_seconds(None);
    let srv_now = plan.server_pid.and_then(|p| sys::cpu_seconds(Some(p)));
    let (hold_secs, gen_hold, srv_hold, rx_hold) = match hold {
        Some((t, g0, s0, rx0)) => {
            let secs = now.duration_since(t).as_secs_f64().max(1e-3);
            let pct = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (b - a) / secs * 100.0);
            (
                secs,
                pct(g0, gen_now),
                pct(s0, srv_now),
                Some((snap.packets_received.saturating_sub(rx0)) as f64 / secs),
            )
        }
        None => (0.0, None, None, None),
    };
    let srv_cpu_us_per_packet = match (hold, srv_now, rx_hold) {
        (Some((_, _, Some(s0), rx0)), Some(s1), Some(_)) if snap.packets_received > rx0 => {
            Some((s1 - s0) * 1e6 / (snap.packets_received - rx0) as f64)
        }
        _ => None,
    };
    let mut bottleneck = Vec::new();
    let cores = sys::cpus() as f64;
    if let Some(g) = gen_hold
        && g > 80.0 * cores
    {
        bottleneck.push(format!(
            "generator CPU {g:.0}% of one core with {cores} cores: it may limit the load"
        ));
    }
    if let (Some((b0, t0)), Some((b1, t1))) = (machine0, sys::machine_cpu())
        && t1 > t0
    {
        let busy = (b1 - b0) as f64 * 100.0 / (t1 - t0) as f64;
        if busy > 95.0 {
            bottleneck.push(format!(
                "the machine's CPUs were {busy:.0}% busy during the hold: client and server compete for them"
            ));
        }
    }
    let lateness_p99 = crate::stats::percentile_ms(&snap.send_lateness, 99.0);
    if lateness_p99 > 5.0 {
        bottleneck.push(format!(
            "send lateness p99 {lateness_p99:.1} ms: the generator cannot keep its schedule"
        ));
    }
    if snap.send_drops > 0 {
        bottleneck.push(format!("{} datagrams the generator could not send", snap.send_drops));
    }
    let media = MediaFigures {
        peers: snap.peers,
        connected: snap.connected,
        failed: snap.failed,
        receiving: snap.receiving,
        packets_sent: snap.packets_sent,
        packets_received: snap.packets_received,
        bytes_received: snap.bytes_received,
        loss_pct: snap.loss_fraction() * 100.0,
        lost: snap.lost,
        jitter_ms: snap.jitter_ms,
        nacks_sent: snap.nacks_sent,
        nacks_received: snap.nacks_received,
        keyframe_requests: snap.keyframe_requests,
        send_drops: snap.send_drops,
        latency: Percentiles::of(&snap.latency),
        connect_time: Percentiles::of(&snap.connect_time),
        first_media: Percentiles::of(&snap.first_media),
        send_lateness: Percentiles::of(&snap.send_lateness),
        rx_pps_hold: rx_hold.unwrap_or(0.0),
    };
    Report {
        target: name.to_string(),
        complete: aborted.is_none(),
        aborted,
        conversations: plan.conversations,
        established: est,
        success_pct: est as f64 * 100.0 / f64::from(plan.conversations.max(1)),
        failures: failures.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        stages: sig
            .stages
            .iter()
            .map(|(k, h)| (k.to_string(), Percentiles::of(h)))
            .collect(),
        chat_sent: sig.chat_sent,
        chat_received: sig.chat_received,
        chat_rtt: sig.chat_rtt.as_ref().map(Percentiles::of),
        masking_violations: sig.masking_violations,
        file_failures: sig.file_failures + snap.file_failures,
        files_ok: sig.files_ok + snap.files_ok,
        media,
        server: ProcessFigures {
            pid: plan.server_pid,
            cpu_seconds: srv_cpu0.zip(srv_now).map(|(a, b)| b - a),
            cpu_pct_hold: srv_hold,
            peak_rss_mib: peak_rss,
            start_rss_mib: start_rss,
        },
        generator: ProcessFigures {
            pid: Some(std::process::id()),
            cpu_seconds: gen_cpu0.zip(gen_now).map(|(a, b)| b - a),
            cpu_pct_hold: gen_hold,
            peak_rss_mib: sys::rss_mib(std::process::id()),
            start_rss_mib: None,
        },
        server_cpu_us_per_packet: srv_cpu_us_per_packet,
        generator_bottleneck: bottleneck,
        ramp_seconds: ramp_secs,
        hold_seconds: hold_secs,
        timeline,
        thresholds: Vec::new(),
        server_metrics: BTreeMap::new(),
        attempts: 0,
        soak: None,
        nodes: Vec::new(),
    }
}
