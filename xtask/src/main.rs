//! Project tasks, run as `cargo xtask <task>`.
//!
//! - `cargo xtask test`: installs what the tests need (Debian packages, when run as root) and runs every
//!   test of the workspace: formatting (`cargo fmt --check`), lints, unit, integration, end-to-end and doc
//!   tests, and each benchmark once in test mode, then each fuzz target for a short time
//!   ([`FUZZ_SECONDS_IN_TEST`] seconds). It fails loudly when something is missing; it never skips a test.
//! - `cargo xtask fuzz [--seconds N] [--target T]`: every fuzz target (or T) for N seconds (default 60);
//!   see `fuzz.rs` and docs/RELIABILITY.md.
//!
//! The task runner uses only the standard library so that it builds in seconds on a fresh machine.

mod fuzz;
mod janus;

use std::env;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages the test suite needs, with the command that proves each one is present.
/// Keep this list in step with what the tests start.
const SYSTEM_PACKAGES: &[(&str, &str)] = &[
    // Network namespaces for the loopback-only end-to-end tests.
    ("iproute2", "ip"),
    // The browser end-to-end tests (tests/browser_*.rs): Chromium and the chromedriver of the same build.
    ("chromium", "chromium"),
    ("chromium-driver", "chromedriver"),
];

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
        Some("install-deps") => install_system_packages(),
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
         install-deps   only install the Debian packages the tests need (as root)\n  \
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

fn test(extra: &[String]) -> Result<(), TaskError> {
    let root = workspace_root();
    install_system_packages()?;
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
