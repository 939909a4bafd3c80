//! `cargo xtask compare-janus`: the same media load against RelayDesk and Janus, side by side.
//!
//! Needs root (network namespace, `apt-get install janus` when missing). Steps: build the load tester in
//! release mode; create a namespace whose veth carries 127.0.0.1 (Janus's libnice never gathers on a
//! loopback-flagged interface; see `JANUS.md`); start Janus there with a minimal config written to a temp
//! dir (VideoRoom + HTTP transport only), the whole RelayDesk server (`relaydesk serve`, fresh data dir:
//! calls set up through its visitor and agent sockets) and the RelayDesk SFU alone
//! (`relaydesk-loadtest serve-sfu`: the production driver and forwarding core behind a plain HTTP
//! offer/answer endpoint); run the identical media load (rooms of two, audio + video both ways) against
//! each at several sizes; write the comparison table and chart with `relaydesk-loadtest compare`. A
//! benchmark: never run in CI.
//!
//! Options: `--sizes 5,10,25` (conversations), `--duration 20s`, `--ramp 5` (conversations per second),
//! `--video-kbps 500`, `--sfu-shards 1`, `--out DIR` (default `target/compare-janus`), `--debug` (the
//! debug builds: quick to get, not for figures), `--no-build` (use the binaries already built).
//!
//! Clean-up on every path: each process is owned by a guard from the moment it is spawned (so one that fails
//! to start, or a later failure, stops it), the namespace's drop kills whatever still runs inside it before
//! deleting it, and a namespace left by an earlier run (killed with SIGKILL) is emptied and removed first.
//! Never is Janus left running in a deleted namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{TaskError, have, is_root, run, workspace_root};

const NS: &str = "rdjanus";
const JANUS_LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";

struct Options {
    sizes: Vec<u32>,
    duration: String,
    video_kbps: u32,
    sfu_shards: u32,
    ramp: String,
    out: PathBuf,
    debug: bool,
    build: bool,
}

fn parse(args: &[String]) -> Result<Options, TaskError> {
    let mut o = Options {
        sizes: vec![5, 10, 25],
        duration: "20s".into(),
        video_kbps: 500,
        sfu_shards: 1,
        ramp: "5".into(),
        out: workspace_root().join("target/compare-janus"),
        debug: false,
        build: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| TaskError::Usage(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--sizes" => {
                o.sizes = val()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<u32>()
                            .map_err(|_| TaskError::Usage(format!("bad size `{s}`")))
                    })
                    .collect::<Result<_, _>>()?;
                if o.sizes.is_empty() || o.sizes.contains(&0) {
                    return Err(TaskError::Usage("--sizes needs positive numbers".into()));
                }
            }
            "--duration" => o.duration = val()?,
            "--video-kbps" => {
                o.video_kbps = val()?
                    .parse()
                    .map_err(|_| TaskError::Usage("--video-kbps needs a number".into()))?
            }
            "--sfu-shards" => {
                o.sfu_shards = val()?
                    .parse()
                    .map_err(|_| TaskError::Usage("--sfu-shards needs a number".into()))?
            }
            "--out" => o.out = PathBuf::from(val()?),
            "--ramp" => o.ramp = val()?,
            "--debug" => o.debug = true,
            "--no-build" => o.build = false,
            other => return Err(TaskError::Usage(format!("compare-janus: unknown option `{other}`"))),
        }
    }
    Ok(o)
}

/// A child process killed (and reaped) when dropped.
struct Guard(Child, &'static str);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        eprintln!("xtask: stopped {}", self.1);
    }
}

/// Kills every process inside the namespace (never this one) and deletes it; quiet when it does not exist.
fn remove_namespace() {
    let own = std::process::id().to_string();
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", NS])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if pid != own && pid.chars().all(|c| c.is_ascii_digit()) {
                eprintln!("xtask: killing process {pid} left in namespace {NS}");
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", NS])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The namespace, emptied and deleted when dropped.
struct Netns;

impl Netns {
    fn create() -> Result<Netns, TaskError> {
        remove_namespace();
        run(Command::new("ip").args(["netns", "add", NS]))?;
        let ns = Netns;
        run(Command::new("ip").args(["-n", NS, "link", "set", "lo", "up"]))?;
        run(Command::new("ip").args(["-n", NS, "link", "add", "jw0", "type", "veth", "peer", "name", "jw1"]))?;
        run(Command::new("ip").args(["-n", NS, "addr", "add", "127.0.0.1/32", "dev", "jw0"]))?;
        run(Command::new("ip").args(["-n", NS, "link", "set", "jw0", "up"]))?;
        run(Command::new("ip").args(["-n", NS, "link", "set", "jw1", "up"]))?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_namespace();
    }
}

/// The temporary config directory, removed when dropped.
struct ConfDir(PathBuf);

impl Drop for ConfDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_janus_config(dir: &Path) -> Result<(), TaskError> {
    let io = |what: &str, source| TaskError::Io {
        what: what.to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create the Janus config dir", e))?;
    let list = |sub: &str, keep: &str| -> Result<String, TaskError> {
        let mut names: Vec<String> = std::fs::read_dir(format!("{JANUS_LIB}/{sub}"))
            .map_err(|e| io("list Janus plugins", e))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.ends_with(".so") && n != keep)
            .collect();
        names.sort();
        Ok(names.join(","))
    };
    let janus = format!(
        "general: {{\n  configs_folder = \"{cfg}\"\n  plugins_folder = \"{JANUS_LIB}/plugins\"\n  \
         transports_folder = \"{JANUS_LIB}/transports\"\n  events_folder = \"{JANUS_LIB}/events\"\n  \
         loggers_folder = \"{JANUS_LIB}/loggers\"\n  debug_level = 3\n  admin_secret = \"compare-janus\"\n}}\n\
         media: {{\n  rtp_port_range = \"20000-40000\"\n}}\n\
         nat: {{\n  ice_enforce_list = \"jw0\"\n  ignore_mdns = true\n}}\n\
         plugins: {{\n  disable = \"{plugins}\"\n}}\n\
         transports: {{\n  disable = \"{transports}\"\n}}\n\
         loggers: {{\n  disable = \"{loggers}\"\n}}\n\
         events: {{\n  broadcast = false\n}}\n",
        cfg = dir.display(),
        plugins = list("plugins", "libjanus_videoroom.so")?,
        transports = list("transports", "libjanus_http.so")?,
        loggers = list("loggers", "")?,
    );
    let http = "general: {\n  json = \"plain\"\n  base_path = \"/janus\"\n  http = true\n  port = 8088\n  \
                ip = \"127.0.0.1\"\n  https = false\n}\nadmin: {\n  admin_http = false\n}\n";
    std::fs::write(dir.join("janus.jcfg"), janus).map_err(|e| io("write janus.jcfg", e))?;
    std::fs::write(dir.join("janus.transport.http.jcfg"), http).map_err(|e| io("write the HTTP config", e))?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")
        .map_err(|e| io("write the VideoRoom config", e))?;
    Ok(())
}

fn in_ns(program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", NS]).arg(program);
    c
}

fn wait_ready(loadtest: &Path, url: &str, child: &mut Child, name: &str) -> Result<(), TaskError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(TaskError::Failed {
                what: format!("{name} exited at start"),
                status: status.to_string(),
            });
        }
        let ok = in_ns(loadtest)
            .args(["probe", url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if ok.is_ok_and(|s| s.success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(TaskError::Missing(format!(
                "{name} did not answer on {url} within 20 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The task.
pub fn compare_janus(args: &[String]) -> Result<(), TaskError> {
    let o = parse(args)?;
    if !is_root() {
        return Err(TaskError::Missing(
            "compare-janus needs root (network namespace, apt-get); run it as root".into(),
        ));
    }
    if !have("janus") {
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "janus"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .or_else(|_| {
            run(Command::new("apt-get").args(["update", "-q"]))?;
            run(Command::new("apt-get")
                .args(["install", "-y", "-q", "janus"])
                .env("DEBIAN_FRONTEND", "noninteractive"))
        })?;
    }
    let root = workspace_root();
    if o.build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut build = Command::new(&cargo);
        build.current_dir(&root).arg("build");
        if !o.debug {
            build.arg("--release");
        }
        run(build.args(["-p", "relaydesk-loadtest", "-p", "relaydesk"]))?;
    }
    let profile = if o.debug { "debug" } else { "release" };
    let bins = target_dir(&root, std::env::var_os("CARGO_TARGET_DIR")).join(profile);
    let relaydesk_bin = bins.join("relaydesk");
    let loadtest = bins.join("relaydesk-loadtest");
    for bin in [&relaydesk_bin, &loadtest] {
        if !bin.exists() {
            return Err(TaskError::Missing(format!(
                "{} (build it: cargo build {}-p relaydesk -p relaydesk-loadtest)",
                bin.display(),
                if o.debug { "" } else { "--release " }
            )));
        }
    }
    std::fs::create_dir_all(&o.out).map_err(|source| TaskError::Io {
        what: "create the output dir".into(),
        source,
    })?;
    let conf_dir = ConfDir(std::env::temp_dir().join(format!("relaydesk-janus-{}", std::process::id())));
    let conf = conf_dir.0.clone();
    write_janus_config(&conf)?;
    // Declared after the config dir and before every process: dropped after the processes' guards.
    let _ns = Netns::create()?;

    let janus_log = std::fs::File::create(o.out.join("janus.log")).map_err(|source| TaskError::Io {
        what: "create janus.log".into(),
        source,
    })?;
    // Each process is guarded as soon as it exists: a start that fails stops it (and the others) on return.
    let mut janus = Guard(
        Command::new("ip")
            .args(["netns", "exec", NS, "janus", "-F"])
            .arg(&conf)
            .args(["-o"])
            .stdout(janus_log)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| TaskError::Io {
                what: "start janus".into(),
                source,
            })?,
        "janus",
    );
    wait_ready(&loadtest, "http://127.0.0.1:8088/janus/info", &mut janus.0, "janus")?;
    let sfu = in_ns(&loadtest)
        .args([
            "serve-sfu",
            "--listen",
            "127.0.0.1:8099",
            "--shards",
            &o.sfu_shards.to_string(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| TaskError::Io {
            what: "start serve-sfu".into(),
            source,
        })?;
    let mut sfu = Guard(sfu, "RelayDesk SFU (serve-sfu)");
    wait_ready(&loadtest, "http://127.0.0.1:8099/stats", &mut sfu.0, "serve-sfu")?;
    // The whole RelayDesk server: HTTPS, sockets, routing, and its SFU, with a fresh data directory.
    let admin_pw = conf.join("admin.pw");
    let rd_config = conf.join("relaydesk.toml");
    let io = |what: &str, source| TaskError::Io {
        what: what.to_string(),
        source,
    };
    std::fs::write(&admin_pw, "compare-janus-admin-password\n").map_err(|e| io("write admin.pw", e))?;
    // All visitors come from one address here: lift the per-address limits.
    std::fs::write(
        &rd_config,
        "[http]\nmax_connections_per_address = 1000000\n\
         [live]\nsessions_per_minute_per_address = 1000000\nsessions_per_minute_per_key = 1000000\n\
         [live.limits]\nmax_visitor_sockets_per_address = 1000000\n",
    )
    .map_err(|e| io("write relaydesk.toml", e))?;
    let rd = in_ns(&relaydesk_bin)
        .arg("--data-dir")
        .arg(conf.join("relaydesk-data"))
        .arg("--config")
        .arg(&rd_config)
        .args(["serve", "--listen", "127.0.0.1:18443", "--admin-password-file"])
        .arg(&admin_pw)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| TaskError::Io {
            what: "start relaydesk".into(),
            source,
        })?;
    let mut rd = Guard(rd, "relaydesk");
    wait_ready(&loadtest, "https://127.0.0.1:18443/healthz", &mut rd.0, "relaydesk")?;

    let mut reports = Vec::new();
    for &n in &o.sizes {
        for (target, url_flag, url, pid) in [
            ("relaydesk", "--url", "https://127.0.0.1:18443", rd.0.id()),
            ("relaydesk-sfu", "--url", "http://127.0.0.1:8099", sfu.0.id()),
            ("janus", "--janus-url", "http://127.0.0.1:8088/janus", janus.0.id()),
        ] {
            // The full flow creates its group, key and agents itself; chat is off so that the load is the
            // same media load as for the other two.
            let full: Vec<String> = if target == "relaydesk" {
                vec![
                    "--insecure".into(),
                    "--setup".into(),
                    "--admin-password-file".into(),
                    admin_pw.display().to_string(),
                    "--chat-rate".into(),
                    "0".into(),
                ]
            } else {
                Vec::new()
            };
            let json = o.out.join(format!("{target}-{n}.json"));
            let chart = o.out.join(format!("{target}-{n}.html"));
            eprintln!("xtask: {target}, {n} conversations");
            let status = in_ns(&loadtest)
                .args(["--target", target, url_flag, url, "--audio", "--video"])
                .args([
                    "--video-kbps",
                    &o.video_kbps.to_string(),
                    "--conversations",
                    &n.to_string(),
                ])
                .args([
                    "--ramp",
                    "20",
                    "--duration",
                    &o.duration,
                    "--server-pid",
                    &pid.to_string(),
                    "--quiet",
                ])
                .args(["--max-loss", "1", "--max-p99-ms", "50"])
                .args(&full)
                .arg("--json")
                .arg(&json)
                .arg("--chart")
                .arg(&chart)
                .status()
                .map_err(|source| TaskError::Io {
                    what: "run the load tester".into(),
                    source,
                })?;
            // 0: thresholds held, 1: missed (still a data point); anything else: no usable report.
            match status.code() {
                Some(0) | Some(1) => reports.push(json),
                _ => eprintln!("xtask: {target} at {n} conversations failed ({status}); left out of the table"),
            }
        }
    }
    drop(rd);
    drop(sfu);
    drop(janus);
    let table = o.out.join("compare.md");
    let chart = o.out.join("compare.html");
    run(Command::new(&loadtest)
        .args(["compare", "--max-loss", "1", "--max-p99-ms", "50", "--out"])
        .arg(&table)
        .arg("--chart")
        .arg(&chart)
        .args(&reports))?;
    eprintln!("xtask: table in {}, chart in {}", table.display(), chart.display());
    Ok(())
}

/// Where cargo puts its builds: `CARGO_TARGET_DIR` (relative to the workspace root when relative, as cargo
/// reads it from the root), else `<root>/target`. `.ci/run` sets it, so the binaries are not under `target/`.
pub(crate) fn target_dir(root: &Path, env: Option<std::ffi::OsString>) -> PathBuf {
    match env.filter(|v| !v.is_empty()) {
        Some(dir) => root.join(PathBuf::from(dir)),
        None => root.join("target"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_found_where_cargo_put_them() {
        let root = Path::new("/work/repo");
        assert_eq!(target_dir(root, None), PathBuf::from("/work/repo/target"));
        assert_eq!(target_dir(root, Some("".into())), PathBuf::from("/work/repo/target"));
        assert_eq!(
            target_dir(root, Some("/var/tmp/relaydesk-target".into())),
            PathBuf::from("/var/tmp/relaydesk-target")
        );
        assert_eq!(
            target_dir(root, Some("build".into())),
            PathBuf::from("/work/repo/build")
        );
    }
}
