//! `relaydesk-loadtest`: see `relaydesk-loadtest --help` and the README's "Load testing" section.
//!
//! Exit codes: 0 all thresholds held; 1 a threshold was missed (or a masking violation / damaged file);
//! 2 bad command line; 3 the target was unreachable, refused the credentials or died during the run.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use relaydesk_loadtest::cli::{Cli, Command, RunArgs, TargetKind};
use relaydesk_loadtest::http::{self, BaseUrl};
use relaydesk_loadtest::media::MediaConfig;
use relaydesk_loadtest::report::{Report, Thresholds};
use relaydesk_loadtest::run::{Plan, RunError, run};
use relaydesk_loadtest::sys;
use relaydesk_loadtest::target::Target;
use relaydesk_loadtest::target::janus::JanusTarget;
use relaydesk_loadtest::target::relaydesk::{RelayDeskOptions, RelayDeskTarget};
use relaydesk_loadtest::target::sfu::{SfuTarget, serve};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relaydesk-loadtest: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match cli.command {
        Some(Command::ServeSfu {
            listen,
            media_ip,
            shards,
        }) => match rt.block_on(serve(listen, media_ip, shards)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("relaydesk-loadtest serve-sfu: {e}");
                ExitCode::from(3)
            }
        },
        Some(Command::Compare {
            out,
            chart,
            max_loss,
            max_p99_ms,
            reports,
        }) => {
            let reports = match relaydesk_loadtest::compare::load(&reports) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("relaydesk-loadtest compare: {e}");
                    return ExitCode::from(2);
                }
            };
            let table = relaydesk_loadtest::compare::table(&reports, max_loss, max_p99_ms);
            println!("{table}");
            let mut ok = true;
            if let Some(p) = out {
                ok &= std::fs::write(&p, &table)
                    .map_err(|e| eprintln!("cannot write {}: {e}", p.display()))
                    .is_ok();
            }
            if let Some(p) = chart {
                ok &= std::fs::write(&p, relaydesk_loadtest::compare::chart(&reports))
                    .map_err(|e| eprintln!("cannot write {}: {e}", p.display()))
                    .is_ok();
            }
            if ok { ExitCode::SUCCESS } else { ExitCode::from(3) }
        }
        Some(Command::SoakReport {
            report,
            out,
            warmup_min,
            title,
        }) => {
            let r: Report = match std::fs::read(&report)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("relaydesk-loadtest soak-report: {}: {e}", report.display());
                    return ExitCode::from(2);
                }
            };
            let Some(soak) = r.soak else {
                eprintln!(
                    "relaydesk-loadtest soak-report: {} has no soak samples",
                    report.display()
                );
                return ExitCode::from(2);
            };
            let soak = relaydesk_loadtest::soak::analyse(
                soak.interval_secs,
                warmup_min.unwrap_or(soak.warmup_min),
                soak.samples,
            );
            println!("{}", soak.table());
            if !write_soak(&out, &soak, &title) {
                return ExitCode::from(3);
            }
            if soak.flat {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Some(Command::Probe { url }) => {
            let ok = rt.block_on(async {
                let Ok(base) = BaseUrl::parse(&url) else { return false };
                let tls = http::tls_config(None, true).ok();
                let c = http::Client::new(base, tls, Duration::from_secs(2));
                c.request("GET", "", &[], None).await.is_ok()
            });
            if ok { ExitCode::SUCCESS } else { ExitCode::from(3) }
        }
        None => rt.block_on(load(cli.run)),
    }
}

async fn load(args: RunArgs) -> ExitCode {
    if let Err(e) = args.validate() {
        eprintln!("relaydesk-loadtest: {e}");
        return ExitCode::from(2);
    }
    let tls = {
        let ca = match &args.ca_cert {
            Some(p) => match std::fs::read(p) {
                Ok(b) => Some(b),
                Err(e) => {
                    eprintln!("relaydesk-loadtest: cannot read --ca-cert {}: {e}", p.display());
                    return ExitCode::from(2);
                }
            },
            None => None,
        };
        match http::tls_config(ca.as_deref(), args.insecure) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("relaydesk-loadtest: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let urls = match args.target {
        TargetKind::Janus => args.janus_url.clone().into_iter().collect(),
        _ => args.url.clone(),
    };
    let mut nodes = Vec::new();
    for url in &urls {
        match BaseUrl::parse(url) {
            Ok(base) => nodes.push(http::Client::new(base, Some(tls.clone()), Duration::from_secs(20))),
            Err(e) => {
                eprintln!("relaydesk-loadtest: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(client) = nodes.first().cloned() else {
        eprintln!("relaydesk-loadtest: --url is needed");
        return ExitCode::from(2);
    };
    let metrics_client = client.clone();
    let server_pid = args.server_pid.or_else(|| match args.target {
        TargetKind::Janus => sys::find_process("janus"),
        TargetKind::Relaydesk => sys::find_process("relaydesk"),
        TargetKind::RelaydeskSfu => None,
    });
    let plan = Plan {
        conversations: args.conversations,
        ramp: args.ramp,
        duration: args.duration,
        media: MediaConfig {
            audio: args.audio,
            video: args.video,
            video_kbps: args.video_kbps,
            fps: args.fps,
            keyframe_interval: args.keyframe_interval,
            ..MediaConfig::default()
        },
        shards: args.shards,
        server_pid,
        progress: !args.quiet,
        lifetime: args.churn,
        sample_every: args.soak.then_some(args.sample_every),
        warmup: args.warmup(),
    };
    if args.soak && server_pid.is_none() {
        eprintln!("relaydesk-loadtest: --soak needs the server's process id (--server-pid)");
        return ExitCode::from(2);
    }
    let mut node_report = None;
    let result = match args.target {
        TargetKind::Janus => go(Arc::new(JanusTarget::new(client, args.media_ip)), plan).await,
        TargetKind::RelaydeskSfu => go(Arc::new(SfuTarget::new(client, args.media_ip)), plan).await,
        TargetKind::Relaydesk => {
            let opts = match RelayDeskOptions::from_args(&args) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("relaydesk-loadtest: {e}");
                    return ExitCode::from(2);
                }
            };
            let target = Arc::new(RelayDeskTarget::with_nodes(nodes, tls, args.media_ip, opts));
            let result = go(Arc::clone(&target), plan).await;
            if urls.len() > 1 {
                node_report = Some(target.node_report().await);
            }
            result
        }
    };
    let mut report = match result {
        Ok(r) => r,
        Err(RunError::Preflight(e)) => {
            eprintln!("relaydesk-loadtest: {e}");
            let r = Report {
                target: format!("{:?}", args.target).to_lowercase(),
                aborted: Some(e),
                conversations: args.conversations,
                ..Default::default()
            };
            write_outputs(&r, &args);
            return ExitCode::from(3);
        }
        Err(e) => {
            eprintln!("relaydesk-loadtest: {e}");
            return ExitCode::from(3);
        }
    };
    if args.target == TargetKind::Relaydesk
        && let Ok(r) = metrics_client.request("GET", "/metrics", &[], None).await
        && r.status == 200
    {
        report.server_metrics = relaydesk_loadtest::report::parse_metrics(&String::from_utf8_lossy(&r.body));
    }
    report.nodes = node_report.unwrap_or_default();
    let ok = report.check(&Thresholds {
        max_loss: args.max_loss,
        max_p99_ms: args.max_p99_ms,
        min_success: args.min_success,
    });
    println!("{}", report.table());
    write_outputs(&report, &args);
    if !report.complete {
        eprintln!(
            "relaydesk-loadtest: run aborted: {}",
            report.aborted.as_deref().unwrap_or("?")
        );
        return ExitCode::from(3);
    }
    if report.established == 0 {
        eprintln!("relaydesk-loadtest: no conversation could be set up");
        return ExitCode::from(3);
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

async fn go<T: Target + 'static>(t: Arc<T>, plan: Plan) -> Result<Report, RunError> {
    run(t, plan).await
}

fn write_outputs(report: &Report, args: &RunArgs) {
    if let Some(p) = &args.json {
        match report.write_json(p) {
            Ok(()) => eprintln!("report written to {}", p.display()),
            Err(e) => eprintln!("relaydesk-loadtest: cannot write {}: {e}", p.display()),
        }
    }
    if let Some(p) = &args.chart {
        match report.write_chart(p) {
            Ok(()) => eprintln!("chart written to {}", p.display()),
            Err(e) => eprintln!("relaydesk-loadtest: cannot write {}: {e}", p.display()),
        }
    }
    if let (Some(prefix), Some(soak)) = (&args.soak_out, &report.soak) {
        let title = format!(
            "RelayDesk soak: {} conversations{}, {:.0} min hold, sampled every {:.0} s",
            report.conversations,
            args.churn
                .map_or(String::new(), |c| format!(" (each {:.0} s)", c.as_secs_f64())),
            report.hold_seconds / 60.0,
            soak.interval_secs
        );
        write_soak(prefix, soak, &title);
    }
}

/// Writes `PREFIX.svg`, `PREFIX.csv` and `PREFIX.md`; false if one could not be written.
fn write_soak(prefix: &std::path::Path, soak: &relaydesk_loadtest::soak::SoakFigures, title: &str) -> bool {
    let mut ok = true;
    for (ext, text) in [("svg", soak.svg(title)), ("csv", soak.csv()), ("md", soak.table())] {
        let p = prefix.with_extension(ext);
        match std::fs::write(&p, text) {
            Ok(()) => eprintln!("soak {ext} written to {}", p.display()),
            Err(e) => {
                eprintln!("relaydesk-loadtest: cannot write {}: {e}", p.display());
                ok = false;
            }
        }
    }
    ok
}
