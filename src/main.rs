//! The `relaydesk` binary: `relaydesk serve` runs the all-in-one server; `user`, `group` and `key` manage
//! accounts and site keys offline on the same data directory.

mod archive_cli;
mod cli;
mod cluster_cli;
mod offline;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use relaydesk::media::SfuMedia;
use relaydesk_sfu::DriverConfig;
use relaydesk_signalling::cluster::standby::{self, StandbyEnd};
use relaydesk_signalling::config::{Config, Overrides};
use relaydesk_signalling::live::{LiveParts, MediaWiring};
use relaydesk_signalling::media::MediaEvent;
use relaydesk_signalling::server::AdminBootstrap;
use relaydesk_signalling::{Server, StartOptions};

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Overrides::from_env(|k| std::env::var(k).ok())
        .and_then(|env| Config::resolve(cli.overrides().over(env)))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve(_) => serve(config),
        Command::Mask(args) => archive_cli::mask(&args),
        Command::Cluster(c) => cluster_cli::run(&c, &config),
        other => {
            init_logging("warn");
            offline::run(other, &config)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr; stdout carries only the lines an operator or a script reads.
    // Colours only on a terminal: log files and journald get plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs the server until SIGINT or SIGTERM, then shuts down within the configured grace period.
fn serve(mut config: Config) -> Result<(), Box<dyn std::error::Error>> {
    init_logging(&config.log);
    let grace = Duration::from_secs(config.http.shutdown_grace_secs);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async move {
        // In a cluster, a node serves only while it holds the leader lease; until then it forwards its
        // clients to the leader (`cluster::standby`).
        let mut lease = match &config.cluster.redis_url {
            None => None,
            Some(_) => match standby::run(&config, print_standby, async {
                if let Err(e) = wait_for_signal().await {
                    tracing::warn!(error = %e, "cannot wait for signals");
                    std::future::pending::<()>().await;
                }
            })
            .await?
            {
                StandbyEnd::Leader {
                    lease,
                    local,
                    registration,
                } => {
                    // The full server takes the standby's address (with `--listen …:0`, the same port).
                    config.listen = local;
                    Some((lease, *registration))
                }
                StandbyEnd::Stopped => {
                    tracing::info!("stopped while standing by");
                    return Ok(());
                }
            },
        };
        let advertise = config.cluster.clone();
        let (mut lease, registration) = match lease.take() {
            Some((l, r)) => (Some(l), Some(r)),
            None => (None, None),
        };
        let mut sfu = start_media(&config)?;
        let mut parts = LiveParts::default();
        if let Some((control, events)) = sfu.as_mut().and_then(|(m, e)| e.take().map(|e| (Arc::clone(m), e))) {
            parts.media = Some(MediaWiring { control, events });
        }
        let mut options = StartOptions::default().live(parts);
        options.registration = registration;
        let server = Server::start_with(config, options).await?;
        // Best effort: a standby that became the leader may have a reader that stopped at its first lines.
        if let Err(e) = print_startup(&server, sfu.as_ref().map(|(s, _)| s.as_ref())) {
            tracing::warn!(error = %e, "startup lines not written to stdout (a generated admin password is lost: set one with `relaydesk user passwd admin`)");
        }
        if let Some(lease) = &lease {
            lease.publish(advertise.advertised(server.local_addr()), server.fingerprint().to_owned());
        }
        {
            let lost = async {
                match lease.as_mut() {
                    Some(lease) => lease.ended().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = wait_for_signal() => r?,
                end = lost => {
                    // Another node leads now and restores every conversation from the store: stop at once, as a
                    // crash would, rather than end the conversations it now holds.
                    tracing::error!(?end, "lost the leader lease; exiting so that the new leader owns every conversation");
                    eprintln!("error: lost the cluster's leader lease ({end:?}); exiting");
                    std::process::exit(75);
                }
            }
        }
        tracing::info!("shutdown requested");
        let handle = server.shutdown_handle();
        handle.shutdown();
        // The server bounds its own drain by the grace period; this outer bound covers the rest.
        match tokio::time::timeout(grace + Duration::from_secs(5), server.wait()).await {
            Ok(r) => r?,
            Err(_) => tracing::warn!("server did not stop in time; exiting anyway"),
        }
        if let Some((sfu, _)) = &sfu
            && let Err(e) = sfu.shutdown(Duration::from_secs(5))
        {
            tracing::warn!(error = %e, "SFU did not stop cleanly");
        }
        // Released last: a standby takes over only once this node no longer serves.
        if let Some(lease) = lease {
            lease.release().await;
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    // Blocking tasks (a password hash in flight) get a short bound too.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// The startup lines on stdout: the certificate's fingerprint, a generated admin password (once), the media
/// addresses, and last the URL (scripts read until it).
fn print_startup(server: &relaydesk_signalling::server::RunningServer, sfu: Option<&SfuMedia>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "TLS certificate SHA-256 fingerprint: {}", server.fingerprint())?;
    match server.admin_bootstrap() {
        Some(AdminBootstrap::Generated(password)) => {
            // Printed once, on stdout only; never through the logger.
            writeln!(out, "created user `admin` with password: {password}")?;
            writeln!(out, "(shown once; change it with `relaydesk user passwd admin`)")?;
        }
        Some(AdminBootstrap::FromFile) => writeln!(out, "created user `admin` with the password from the file")?,
        None => {}
    }
    if let Some(sfu) = sfu {
        let addrs: Vec<String> = (0..sfu.handle().shard_count())
            .filter_map(|i| sfu.handle().announced_addr(i))
            .map(|a| a.to_string())
            .collect();
        writeln!(out, "media (UDP): {}", addrs.join(" "))?;
    }
    // Last startup line: scripts read until it.
    writeln!(out, "listening on {}", server.url())?;
    out.flush()?;
    Ok(())
}

/// A standby's startup lines (on stdout, like the server's): its certificate, its part, its address.
fn print_standby(local: std::net::SocketAddr, fingerprint: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "TLS certificate SHA-256 fingerprint: {fingerprint}");
    let _ = writeln!(out, "standing by: forwarding clients to the cluster's leader");
    let _ = writeln!(out, "listening on https://{local}");
    let _ = out.flush();
}

/// The SFU media and its event stream, when `[media] enabled`.
type Media = Option<(Arc<SfuMedia>, Option<tokio::sync::mpsc::Receiver<MediaEvent>>)>;

/// Starts the SFU shards (UDP sockets bound before the HTTPS listener opens).
fn start_media(config: &Config) -> Result<Media, Box<dyn std::error::Error>> {
    if !config.media.enabled {
        return Ok(None);
    }
    let mut driver = DriverConfig::new(config.media.bind_ip, config.media.shards);
    driver.port_base = config.media.port_base;
    driver.announce_ip = config.media.announce_ip;
    // The chat policy (`[live.masking]`, validated with the config): in-call text is masked like chat.
    let masker = config.live.masking.compile()?;
    let (sfu, events) = SfuMedia::start(&driver, &masker, config.media.pace_video)?;
    Ok(Some((sfu, Some(events))))
}

async fn wait_for_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
