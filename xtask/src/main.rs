//! Project tasks, run as `cargo xtask <task>`.
//!
//! - `cargo xtask test`: installs what the tests need (Debian packages, when run as root; PostgreSQL and
//!   Redis installed and started where none answers on loopback, see `services.rs`; schemathesis from
//!   PyPI into a virtual environment under the target directory) and runs every
//!   test of the workspace: formatting (`cargo fmt --check`), lints, unit, integration, end-to-end and doc
//!   tests, and each benchmark once in test mode, then each fuzz target for a short time
//!   ([`FUZZ_SECONDS_IN_TEST`] seconds). It fails loudly when something is missing; it never skips a test.
//! - `cargo xtask fuzz [--seconds N] [--target T]`: every fuzz target (or T) for N seconds (default 60);
//!   see `fuzz.rs` and docs/RELIABILITY.md.
//!
//! The task runner uses only the standard library so that it builds in seconds on a fresh machine.

mod fuzz;
mod janus;
mod services;

use std::env;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages the test suite needs, with the command that proves each one is present.
/// Keep this list in step with what the tests start.
const SYSTEM_PACKAGES: &[(&str, &str)] = &[
    // Network namespaces for the loopback-only end-to-end tests, and `tc` for the bad-network tests' rate cap.
    ("iproute2", "ip"),
    // nftables in the bad-network tests' namespaces (tests/common/netns.rs): dropped protocols, loss, outages.
    ("nftables", "nft"),
    // sysctl in those namespaces (IPv4 only on their veth pair).
    ("procps", "sysctl"),
    // `cargo xtask compare-janus` and its test (xtask/tests/compare_janus.rs).
    ("janus", "janus"),
    // The browser end-to-end tests (tests/browser_*.rs): Chromium and the chromedriver of the same build.
    ("chromium", "chromium"),
    ("chromium-driver", "chromedriver"),
    // Call recordings decoded and measured (tests/browser_recording.rs): ffprobe and ffmpeg.
    ("ffmpeg", "ffprobe"),
    // TURN over TLS through the HTTPS port (tests/turn_tls.rs) runs a real coturn.
    ("coturn", "turnserver"),
    // schemathesis (tests/openapi.rs) runs in a virtual environment of its own: see `install_schemathesis`.
    ("python3", "python3"),
    // tests/acme_pebble.rs: Let's Encrypt's test authority and its test DNS server (same package).
    ("pebble", "pebble-challtestsrv"),
];

/// The schemathesis release tests/openapi.rs runs (keep in step with `SCHEMATHESIS_VERSION` there).
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Seconds each fuzz target runs in `cargo xtask test`: long enough to replay the seed corpus and find a
/// shallow regression, short enough for CI (6 targets: about 1.5 minutes after the instrumented build).
const FUZZ_SECONDS_IN_TEST: u64 = 15;

#[derive(Debug)]
enum TaskError {
    Usage(String),
    Missing(String),
    Failed { what: String, status: String },
    Io { what: String, source: std::io::Error },
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Usage(msg) => write!(f, "{msg}"),
            TaskError::Missing(msg) => write!(f, "missing: {msg}"),
            TaskError::Failed { what, status } => write!(f, "`{what}` failed ({status})"),
            TaskError::Io { what, source } => write!(f, "could not run `{what}`: {source}"),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("install-deps") => install_system_packages()
            .and_then(|()| services::ensure())
            .and_then(|()| install_schemathesis().map(|_| ())),
        Some("compare-janus") => janus::compare_janus(&args[1..]),
        Some("fuzz") => {
            fuzz::FuzzOptions::parse(&args[1..], 60).and_then(|o| fuzz::fuzz(&workspace_root(), &o).map(|_| ()))
        }
        Some("help") | Some("--help") | Some("-h") | None => {
            print_help();
            Ok(())
        }
        Some(other) => Err(TaskError::Usage(format!(
            "unknown task `{other}`; try `cargo xtask help`"
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!(
        "cargo xtask <task>\n\n\
         tasks:\n  \
         test           install what the tests need, then run every test (lints included)\n  \
         install-deps   only install what the tests need: Debian packages (as root), PostgreSQL and Redis\n                 started where missing, schemathesis (PyPI)\n  \
         fuzz           run every fuzz target (cargo fuzz): [--seconds N (default 60)] [--target T]...\n  \
         compare-janus  benchmark: the same media load against RelayDesk (server and SFU) and Janus (root; not CI)\n"
    );
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("xtask"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<(), TaskError> {
    let what = format!("{cmd:?}").replace('"', "");
    eprintln!("xtask: running {what}");
    let status = cmd.status().map_err(|source| TaskError::Io {
        what: what.clone(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(TaskError::Failed {
            what,
            status: status.to_string(),
        })
    }
}

fn install_system_packages() -> Result<(), TaskError> {
    let missing: Vec<&str> = SYSTEM_PACKAGES
        .iter()
        .filter(|(_, probe)| !have(probe))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(TaskError::Missing(format!(
            "Debian packages {missing:?} are needed by the tests; run `sudo apt-get install -y {}` or run this task as root",
            missing.join(" ")
        )));
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for (pkg, probe) in SYSTEM_PACKAGES {
        if !have(probe) {
            return Err(TaskError::Missing(format!(
                "`{probe}` (package {pkg}) is still missing after installing"
            )));
        }
    }
    Ok(())
}

/// Whether `program --version` names `version`.
fn has_version(program: &Path, version: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version))
        .unwrap_or(false)
}

/// Installs schemathesis (pinned) into a virtual environment under the target directory, once, and returns
/// its program. A virtual environment of our own works the same on Debian 12 (whose system Python refuses
/// `pip install` outside one, PEP 668) and elsewhere, and leaves the system's Python untouched.
fn install_schemathesis() -> Result<PathBuf, TaskError> {
    let root = workspace_root();
    let venv = janus::target_dir(&root, env::var_os("CARGO_TARGET_DIR"))
        .join("tools")
        .join(format!("schemathesis-{SCHEMATHESIS_VERSION}"));
    let program = venv.join("bin").join("schemathesis");
    if has_version(&program, SCHEMATHESIS_VERSION) {
        return Ok(program);
    }
    // Debian ships the venv module's pip bootstrap (ensurepip) in a package of its own.
    let ensurepip = Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ensurepip {
        if !is_root() {
            return Err(TaskError::Missing(
                "python3's venv module (Debian package python3-venv); run `sudo apt-get install -y python3-venv` \
                 or run this task as root"
                    .into(),
            ));
        }
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "python3-venv"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if venv.exists() {
        // A half-made or outdated environment: start again.
        std::fs::remove_dir_all(&venv).map_err(|source| TaskError::Io {
            what: format!("remove {}", venv.display()),
            source,
        })?;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "--no-input"])
        .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}")))?;
    if has_version(&program, SCHEMATHESIS_VERSION) {
        Ok(program)
    } else {
        Err(TaskError::Missing(format!(
            "{} does not report schemathesis {SCHEMATHESIS_VERSION} after installing",
            program.display()
        )))
    }
}

fn test(extra: &[String]) -> Result<(), TaskError> {
    let root = workspace_root();
    install_system_packages()?;
    services::ensure()?;
    let schemathesis = install_schemathesis()?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());

    // Formatting first: it needs no build.
    run(Command::new(&cargo)
        .current_dir(&root)
        .args(["fmt", "--all", "--", "--check"]))?;
    // The fuzz crate is outside the workspace: `--all` does not reach it.
    run(Command::new(&cargo)
        .current_dir(&root)
        .args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]))?;
    // Lints next: cheap, and they share the dependency build with the tests.
    run(Command::new(&cargo).current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Every unit, integration and end-to-end test, and each bench once in test mode.
    run(Command::new(&cargo)
        .current_dir(&root)
        .args(["test", "--workspace", "--all-targets", "--locked"])
        .env("RELAYDESK_SCHEMATHESIS", &schemathesis)
        .env(
            "RELAYDESK_TEST_POSTGRES",
            env::var("RELAYDESK_TEST_POSTGRES").unwrap_or_else(|_| services::POSTGRES_URL.into()),
        )
        .env(
            "RELAYDESK_TEST_REDIS",
            env::var("RELAYDESK_TEST_REDIS").unwrap_or_else(|_| services::REDIS_URL.into()),
        )
        .args(extra))?;
    run(Command::new(&cargo)
        .current_dir(&root)
        .args(["test", "--workspace", "--doc", "--locked"]))?;
    // Each fuzz target briefly on its corpus: a regression in a parser shows here.
    fuzz::fuzz(
        &root,
        &fuzz::FuzzOptions {
            seconds: FUZZ_SECONDS_IN_TEST,
            targets: Vec::new(),
        },
    )?;
    eprintln!("xtask: every test passed");
    Ok(())
}
