//! `cargo xtask fuzz [--seconds N] [--target T]...`: builds every fuzz target of `fuzz/` once (cargo fuzz,
//! libFuzzer, coverage-instrumented) and runs each for N seconds (default 60) on its seed corpus, then
//! prints the executions and coverage reached per target. `cargo xtask test` runs it briefly.
//!
//! - Targets are the files `fuzz/src/bin/*.rs` (adding a target is adding one file there).
//! - cargo-fuzz is installed (`cargo install cargo-fuzz --locked`) when `cargo fuzz` is missing.
//! - The build uses `--sanitizer none` on the toolchain in use (stable works: every flag it needs is
//!   stable); AddressSanitizer needs nightly and adds little for code without `unsafe` (the C parts of
//!   dependencies are not instrumented by it either). An operator can still run
//!   `cargo +nightly fuzz run -s address <target>` by hand.
//! - Build directory: `$RELAYDESK_FUZZ_TARGET_DIR`, else `$CARGO_TARGET_DIR-libfuzzer` when
//!   `CARGO_TARGET_DIR` is set (the instrumented build must not share a directory with normal builds:
//!   its flags differ and each would rebuild the other), else `fuzz/target`.
//! - The corpus grown by runs is kept in `<build directory>/corpus/<target>`; the committed seed corpus
//!   `fuzz/corpus/<target>` is only read. A crash leaves its input in `fuzz/artifacts/<target>/` and fails
//!   the task.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{TaskError, run};

/// The version of cargo-fuzz installed when it is missing (the one the task was written against).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Options of one fuzzing run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuzzOptions {
    /// Seconds per target.
    pub seconds: u64,
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
}

impl FuzzOptions {
    /// Parses `--seconds N` and `--target T` (repeatable).
    pub fn parse(args: &[String], default_seconds: u64) -> Result<Self, TaskError> {
        let mut opts = FuzzOptions {
            seconds: default_seconds,
            targets: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| TaskError::Usage(format!("{name} needs a value")))
            };
            match arg.as_str() {
                "--seconds" => {
                    let v = value("--seconds")?;
                    opts.seconds = v
                        .parse()
                        .ok()
                        .filter(|s| *s > 0)
                        .ok_or_else(|| TaskError::Usage(format!("--seconds: `{v}` is not a positive number")))?;
                }
                "--target" => opts.targets.push(value("--target")?),
                other => return Err(TaskError::Usage(format!("fuzz: unknown argument `{other}`"))),
            }
        }
        Ok(opts)
    }
}

/// What one target's run reached, from libFuzzer's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Wall-clock seconds the run took (less than asked when it stopped at a crash).
    pub seconds: u64,
    /// Inputs executed (`stat::number_of_executed_units`).
    pub execs: u64,
    /// Coverage points (`cov:` of the last status line).
    pub cov: u64,
    /// Features (`ft:` of the last status line).
    pub ft: u64,
    /// Corpus entries at the end (`corp:`).
    pub corpus: u64,
}

/// Reads the last status line (`#N ... cov: X ft: Y corp: Z/...`) and the final statistics.
pub fn parse_stats(output: &str) -> RunStats {
    let mut stats = RunStats::default();
    let field = |line: &str, name: &str| -> Option<u64> {
        let rest = line.split(name).nth(1)?;
        let word = rest.split_whitespace().next()?;
        word.split('/').next()?.parse().ok()
    };
    for line in output.lines() {
        if line.starts_with('#') {
            if let Some(v) = field(line, "cov: ") {
                stats.cov = v;
            }
            if let Some(v) = field(line, "ft: ") {
                stats.ft = v;
            }
            if let Some(v) = field(line, "corp: ") {
                stats.corpus = v;
            }
        }
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            stats.execs = v.trim().parse().unwrap_or(0);
        }
    }
    stats
}

/// The fuzz targets: the stems of `fuzz/src/bin/*.rs`, sorted.
pub fn list_targets(fuzz_dir: &Path) -> Result<Vec<String>, TaskError> {
    let bin = fuzz_dir.join("src").join("bin");
    let entries = fs::read_dir(&bin).map_err(|source| TaskError::Io {
        what: format!("read {}", bin.display()),
        source,
    })?;
    let mut targets: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    targets.sort();
    Ok(targets)
}

/// Where the instrumented build goes (see the module docs).
pub fn fuzz_target_dir(
    root: &Path,
    explicit: Option<std::ffi::OsString>,
    cargo_target_dir: Option<std::ffi::OsString>,
) -> PathBuf {
    if let Some(dir) = explicit.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = cargo_target_dir.filter(|d| !d.is_empty()) {
        let mut dir = dir;
        dir.push("-libfuzzer");
        return PathBuf::from(dir);
    }
    root.join("fuzz").join("target")
}

fn host_triple() -> Result<String, TaskError> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|source| TaskError::Io {
            what: "rustc -vV".into(),
            source,
        })?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| TaskError::Missing("the host triple in `rustc -vV`".into()))
}

fn ensure_cargo_fuzz(cargo: &str) -> Result<(), TaskError> {
    let present = Command::new(cargo)
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: cargo-fuzz is missing; installing it");
    run(Command::new(cargo).args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION]))
}

/// Builds every target once, then runs each (or the chosen ones) for `opts.seconds`.
pub fn fuzz(root: &Path, opts: &FuzzOptions) -> Result<Vec<(String, RunStats)>, TaskError> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let fuzz_dir = root.join("fuzz");
    let all = list_targets(&fuzz_dir)?;
    if let Some(unknown) = opts.targets.iter().find(|t| !all.contains(t)) {
        return Err(TaskError::Usage(format!(
            "no fuzz target `{unknown}`; the targets are {}",
            all.join(", ")
        )));
    }
    let targets = if opts.targets.is_empty() {
        all
    } else {
        opts.targets.clone()
    };
    ensure_cargo_fuzz(&cargo)?;
    let target_dir = fuzz_target_dir(
        root,
        env::var_os("RELAYDESK_FUZZ_TARGET_DIR"),
        env::var_os("CARGO_TARGET_DIR"),
    );
    // One build for every target (cargo fuzz builds all bins when none is named).
    run(Command::new(&cargo)
        .current_dir(root)
        .args(["fuzz", "build", "--sanitizer", "none", "--target-dir"])
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR"))?;
    let bin_dir = target_dir.join(host_triple()?).join("release");
    let mut results = Vec::new();
    let mut crashed = Vec::new();
    for target in &targets {
        let work = target_dir.join("corpus").join(target);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        let seeds = fuzz_dir.join("corpus").join(target);
        for dir in [&work, &artifacts, &seeds] {
            fs::create_dir_all(dir).map_err(|source| TaskError::Io {
                what: format!("create {}", dir.display()),
                source,
            })?;
        }
        let mut cmd = Command::new(bin_dir.join(target));
        cmd.arg(format!("-max_total_time={}", opts.seconds))
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(&work)
            .arg(&seeds)
            .stdout(Stdio::inherit());
        eprintln!("xtask: fuzzing {target} for {} s", opts.seconds);
        let started = std::time::Instant::now();
        let out = cmd.output().map_err(|source| TaskError::Io {
            what: format!("{}", bin_dir.join(target).display()),
            source,
        })?;
        let text = String::from_utf8_lossy(&out.stderr);
        let mut stats = parse_stats(&text);
        stats.seconds = started.elapsed().as_secs();
        if !out.status.success() {
            // Show what failed (the panic message) and how libFuzzer saved the input (the end of its output).
            let lines: Vec<&str> = text.lines().collect();
            if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
                for line in &lines[at..lines.len().min(at + 8)] {
                    eprintln!("  {line}");
                }
            }
            for line in &lines[lines.len().saturating_sub(12)..] {
                eprintln!("  {line}");
            }
            crashed.push(format!("{target} (input saved in {})", artifacts.display()));
        }
        eprintln!(
            "xtask: {target}: {} executions, cov {}, ft {}, corpus {}",
            stats.execs, stats.cov, stats.ft, stats.corpus
        );
        results.push((target.clone(), stats));
    }
    print_table(&results);
    if crashed.is_empty() {
        Ok(results)
    } else {
        Err(TaskError::Failed {
            what: "cargo xtask fuzz".into(),
            status: format!("crash or failed property in {}", crashed.join(", ")),
        })
    }
}

fn print_table(results: &[(String, RunStats)]) {
    println!("\n| target | seconds | executions | cov | ft | corpus |\n|---|---|---|---|---|---|");
    for (t, s) in results {
        println!(
            "| {t} | {} | {} | {} | {} | {} |",
            s.seconds, s.execs, s.cov, s.ft, s.corpus
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let args: Vec<String> = ["--seconds", "5", "--target", "masking", "--target", "config_file"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = FuzzOptions::parse(&args, 60).unwrap();
        assert_eq!(o.seconds, 5);
        assert_eq!(o.targets, ["masking", "config_file"]);
        assert_eq!(FuzzOptions::parse(&[], 60).unwrap().seconds, 60);
        assert!(FuzzOptions::parse(&["--seconds".into(), "0".into()], 60).is_err());
        assert!(FuzzOptions::parse(&["--seconds".into()], 60).is_err());
        assert!(FuzzOptions::parse(&["--jobs".into()], 60).is_err());
    }

    #[test]
    fn stats_from_libfuzzer_output() {
        let out = "INFO: Seed: 1\n\
                   #2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #4096\tpulse  cov: 150 ft: 300 corp: 40/2000b lim: 4 exec/s: 2048 rss: 40Mb\n\
                   #5000\tDONE   cov: 160 ft: 320 corp: 42/2100b lim: 4 exec/s: 2500 rss: 40Mb\n\
                   Done 5000 runs in 2 second(s)\n\
                   stat::number_of_executed_units: 5000\n\
                   stat::average_exec_per_sec:     2500\n";
        assert_eq!(
            parse_stats(out),
            RunStats {
                seconds: 0,
                execs: 5000,
                cov: 160,
                ft: 320,
                corpus: 42
            }
        );
    }

    #[test]
    fn target_dir_follows_cargo_target_dir() {
        let root = Path::new("/src/relaydesk");
        assert_eq!(fuzz_target_dir(root, None, None), root.join("fuzz/target"));
        assert_eq!(
            fuzz_target_dir(root, None, Some("/var/tmp/t".into())),
            PathBuf::from("/var/tmp/t-libfuzzer")
        );
        assert_eq!(
            fuzz_target_dir(root, Some("/x".into()), Some("/var/tmp/t".into())),
            PathBuf::from("/x")
        );
    }

    #[test]
    fn every_target_has_a_seed_corpus() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let targets = list_targets(&root.join("fuzz")).unwrap();
        assert!(targets.len() >= 6, "{targets:?}");
        for t in targets {
            let seeds = fs::read_dir(root.join("fuzz/corpus").join(&t))
                .map(|d| d.count())
                .unwrap_or(0);
            assert!(seeds > 0, "fuzz target {t} has no seed corpus in fuzz/corpus/{t}");
        }
    }
}
