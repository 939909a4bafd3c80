//! The database services the tests talk to: PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379.
//!
//! Where one already answers on its port (a developer's machine, a CI machine that runs them), it is used
//! as it is and nothing is changed. Where it is missing, `cargo xtask test` (as root) installs the Debian
//! package (`postgresql`, `redis-server`) and starts it for the test run:
//! - PostgreSQL: the package's default cluster, started with `pg_ctlcluster`; since the tests connect over
//!   TCP as `postgres` without a password, a `trust` rule for that user from 127.0.0.1 is put first in the
//!   cluster's `pg_hba.conf` (a test-machine set-up, never done to a cluster that was already running);
//! - Redis: `redis-server` daemonised on loopback, keeping nothing on disk.
//!
//! Then it waits (bounded) until each port accepts a connection, and hands the tests the addresses in
//! `RELAYDESK_TEST_POSTGRES` and `RELAYDESK_TEST_REDIS`. The `redis-server` program is installed in any
//! case: `tests/cluster_registry.rs` starts a Redis of its own to restart it mid-test.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{TaskError, is_root, run};

/// What the tests connect to (also their defaults when the variables are unset).
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

const POSTGRES_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 5432);
const REDIS_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 6379);
/// How long a freshly started service may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes sure PostgreSQL and Redis answer on loopback, installing and starting them where missing.
pub fn ensure() -> Result<(), TaskError> {
    if !answers(POSTGRES_ADDR) {
        start_postgres()?;
        wait_for("PostgreSQL", POSTGRES_ADDR)?;
    }
    if !answers(REDIS_ADDR) {
        start_redis()?;
        wait_for("Redis", REDIS_ADDR)?;
    }
    // The cluster tests also run a Redis of their own (restarted mid-test): they need the program even where
    // the machine's Redis runs elsewhere (a container).
    if !crate::have("redis-server") {
        need_root("The redis-server program", "redis-server")?;
        apt_install("redis-server")?;
    }
    Ok(())
}

fn answers((ip, port): ([u8; 4], u16)) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(500)).is_ok()
}

fn wait_for(name: &str, addr: ([u8; 4], u16)) -> Result<(), TaskError> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if answers(addr) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(TaskError::Missing(format!(
        "{name} was started but does not accept connections on 127.0.0.1:{} after {}s",
        addr.1,
        START_TIMEOUT.as_secs()
    )))
}

fn need_root(what: &str, package: &str) -> Result<(), TaskError> {
    if is_root() {
        Ok(())
    } else {
        Err(TaskError::Missing(format!(
            "{what} is not running on loopback and the tests need it; install and start it \
             (`sudo apt-get install -y {package}`) or run this task as root"
        )))
    }
}

fn apt_install(package: &str) -> Result<(), TaskError> {
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn start_postgres() -> Result<(), TaskError> {
    need_root("PostgreSQL", "postgresql")?;
    if cluster_dir().is_none() {
        apt_install("postgresql")?;
    }
    let Some(conf) = cluster_dir() else {
        return Err(TaskError::Missing(
            "no PostgreSQL cluster under /etc/postgresql after installing `postgresql`".into(),
        ));
    };
    trust_loopback_postgres(&conf.join("pg_hba.conf"))?;
    let version = conf
        .parent()
        .and_then(Path::file_name)
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `restart` also re-reads pg_hba.conf when the package's post-install already started the cluster.
    run(Command::new("pg_ctlcluster").args([version.as_str(), "main", "restart"]))
}

/// The configuration folder of the default cluster (`/etc/postgresql/<version>/main`), newest version.
fn cluster_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let main = e.path().join("main");
            main.join("pg_hba.conf").exists().then_some((v, main))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

const TRUST_RULE: &str = "host all postgres 127.0.0.1/32 trust # relaydesk tests";

fn trust_loopback_postgres(hba: &Path) -> Result<(), TaskError> {
    let io = |source| TaskError::Io {
        what: format!("edit {}", hba.display()),
        source,
    };
    let current = fs::read_to_string(hba).map_err(io)?;
    if current.lines().any(|l| l.trim() == TRUST_RULE) {
        return Ok(());
    }
    fs::write(hba, format!("{TRUST_RULE}\n{current}")).map_err(io)
}

fn start_redis() -> Result<(), TaskError> {
    need_root("Redis", "redis-server")?;
    if !crate::have("redis-server") {
        apt_install("redis-server")?;
    }
    run(Command::new("redis-server").args([
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
    ]))
}
