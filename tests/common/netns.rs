//! Network namespaces for tests across a real network boundary: the browser's namespace and the server's,
//! joined by a veth pair, with nftables in the browser's namespace deciding what may pass (dropped protocols
//! and ports, random loss, a total outage) and a `tc` token bucket capping the rate.
//!
//! - Every pair has names unique to the test process and the pair (`rdb-PID-N`, `rds-PID-N`); namespaces left
//!   behind by a test process that no longer runs (killed with SIGKILL) are removed when the next pair is made.
//! - The addresses ([`BROWSER_IP`], [`SERVER_IP`], a /30 of 10.0.0.0/8) exist only inside the two namespaces,
//!   with no route anywhere else: nothing a test does there can reach another network.
//! - Code runs inside a namespace in three ways: a program ([`Ns::command`], `ip netns exec`), a closure on a
//!   thread of its own ([`Ns::run`]), or a Tokio runtime whose threads all live there ([`Ns::runtime`]). A
//!   socket belongs to the namespace of the thread that made it, and a child process to that of the thread
//!   that spawned it.
//! - Dropping the [`NetnsPair`] (also while a failed assertion unwinds) kills every process still inside its
//!   namespaces and deletes both; the veth pair goes with them.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); `cargo xtask test` installs both. What the kernel offers
//! (tbf yes, netem no on the reference host) is in docs/RELIABILITY.md, "Bad networks".
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::process::{output_of, output_within};

/// The browser end of the veth pair, in the browser's namespace.
pub const BROWSER_IF: &str = "veth-b";
/// The server end of the veth pair, in the server's namespace.
pub const SERVER_IF: &str = "veth-s";
/// The browser's address (10.231.0.1/30), only inside the browser's namespace.
pub const BROWSER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 231, 0, 1));
/// The server's address (10.231.0.2/30), only inside the server's namespace.
pub const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 231, 0, 2));

/// A second address of the server, from TEST-NET-3 (RFC 5737, documentation only, never routed on any
/// network): added by [`NetnsPair::add_public_server_address`] for tests whose client refuses a private
/// address. Chromium never pairs with an ICE-TCP candidate on a private address (a port-scanning defence),
/// so the ICE-TCP test announces this one. Like the others it exists only inside the two namespaces.
pub const SERVER_PUBLIC_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2));

/// The nftables table the fixture owns in the browser's namespace.
const TABLE: &str = "relaydesk_test";
const PREFIXES: [&str; 2] = ["rdb-", "rds-"];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// What the browser's namespace lets through its veth (loopback inside the namespace is never filtered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Everything passes.
    AllowAll,
    /// No UDP either way; TCP passes.
    DropUdp,
    /// Only TCP to (and back from) this port of the server; everything else is dropped.
    OnlyTcpTo(u16),
    /// No media path: no UDP, and no TCP segment whose payload opens with a STUN message, plain (TURN over
    /// TCP) or in an RFC 4571 frame (ICE-TCP), told by the STUN magic cookie at payload byte 4 or 6. TLS
    /// (HTTPS, WebSockets, so the chat) passes; TURN inside TLS would too (a test using it must not configure it).
    NoMedia,
}

/// Packets the browser's nftables table dropped, by cause (both directions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub policy: u64,
    pub loss: u64,
    pub outage: u64,
}

/// One network namespace of a [`NetnsPair`].
#[derive(Clone, Debug)]
pub struct Ns {
    pub name: String,
    /// The veth end inside this namespace.
    pub interface: &'static str,
    /// This namespace's address on the veth.
    pub ip: IpAddr,
}

/// The browser's and the server's namespaces, joined by a veth pair; deleted on drop.
#[derive(Debug)]
pub struct NetnsPair {
    pub browser: Ns,
    pub server: Ns,
}

fn assert_root() {
    let out = output_of(Command::new("id").arg("-u"));
    assert!(
        String::from_utf8_lossy(&out.stdout).trim() == "0",
        "network namespace tests need root (they create namespaces, veth pairs and nftables rules)"
    );
    for (bin, pkg) in [("/usr/sbin/ip", "iproute2"), ("/usr/sbin/nft", "nftables")] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: run `cargo xtask test` (it installs the Debian package {pkg})"
        );
    }
}

/// Runs `ip ARGS…` (bounded) and fails the test with its error output when it fails.
fn ip(args: &[&str]) {
    let out = output_of(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Names of the namespaces that exist now.
pub fn namespaces() -> Vec<String> {
    match std::fs::read_dir("/run/netns") {
        Ok(dir) => dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Kills every process inside namespace `name` (never this process) and deletes it.
fn delete(name: &str) {
    let own = std::process::id().to_string();
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if pid != own && pid.chars().all(|c| c.is_ascii_digit()) {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes the fixture's namespaces whose test process is gone (a run ended by SIGKILL cannot drop them).
fn remove_orphans() {
    for name in namespaces() {
        let Some(rest) = PREFIXES.iter().find_map(|p| name.strip_prefix(p)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else { continue };
        if !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) && !Path::new(&format!("/proc/{pid}")).exists() {
            delete(&name);
        }
    }
}

impl NetnsPair {
    /// Creates both namespaces (loopback up in each), the veth pair between them with the two addresses, and
    /// the browser's nftables table with [`Policy::AllowAll`], no loss and no outage.
    pub fn new() -> NetnsPair {
        assert_root();
        remove_orphans();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Built field by field so that a failure half-way still deletes what exists (Drop ignores the absent).
        let pair = NetnsPair {
            browser: Ns {
                name: format!("rdb-{pid}-{n}"),
                interface: BROWSER_IF,
                ip: BROWSER_IP,
            },
            server: Ns {
                name: format!("rds-{pid}-{n}"),
                interface: SERVER_IF,
                ip: SERVER_IP,
            },
        };
        for ns in [&pair.browser, &pair.server] {
            ip(&["netns", "add", &ns.name]);
            ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        }
        ip(&[
            "link",
            "add",
            BROWSER_IF,
            "netns",
            &pair.browser.name,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_IF,
            "netns",
            &pair.server.name,
        ]);
        for ns in [&pair.browser, &pair.server] {
            // IPv4 only on the veth: no IPv6 neighbour discovery or router solicitations among the counted
            // packets (set before the link is up, so none is ever sent).
            let out = output_of(ns.command("sysctl").args([
                "-q",
                "-w",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", ns.interface),
            ]));
            assert!(out.status.success(), "sysctl: {}", String::from_utf8_lossy(&out.stderr));
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{}/30", ns.ip),
                "dev",
                ns.interface,
            ]);
            ip(&["-n", &ns.name, "link", "set", ns.interface, "up"]);
        }
        pair.nft(&format!(
            "table inet {TABLE} {{\n\
               chain policy_in {{ }}\n\
               chain policy_out {{ }}\n\
               chain loss {{ }}\n\
               chain outage {{ }}\n\
               chain input {{ type filter hook input priority 0; policy accept;\n\
                 iifname \"{BROWSER_IF}\" jump outage\n\
                 iifname \"{BROWSER_IF}\" jump policy_in\n\
                 iifname \"{BROWSER_IF}\" jump loss\n\
               }}\n\
               chain output {{ type filter hook output priority 0; policy accept;\n\
                 oifname \"{BROWSER_IF}\" jump outage\n\
                 oifname \"{BROWSER_IF}\" jump policy_out\n\
                 oifname \"{BROWSER_IF}\" jump loss\n\
               }}\n\
             }}\n"
        ));
        pair
    }

    /// Gives the server's veth [`SERVER_PUBLIC_IP`] too, and the browser's namespace a route to it over the
    /// veth (a /32: nothing else is reachable through it).
    pub fn add_public_server_address(&self) {
        let addr = format!("{SERVER_PUBLIC_IP}/32");
        ip(&["-n", &self.server.name, "addr", "add", &addr, "dev", SERVER_IF]);
        ip(&["-n", &self.browser.name, "route", "add", &addr, "dev", BROWSER_IF]);
    }

    /// Applies an nftables script (`nft -f -`) in the browser's namespace.
    pub fn nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.browser.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = output_within(child);
        assert!(
            out.status.success(),
            "nft -f:\n{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What the browser's veth lets through from now on.
    pub fn set_policy(&self, policy: Policy) {
        let rules = match policy {
            Policy::AllowAll => String::new(),
            Policy::DropUdp => format!(
                "add rule inet {TABLE} policy_in meta l4proto udp counter drop\n\
                 add rule inet {TABLE} policy_out meta l4proto udp counter drop\n"
            ),
            Policy::NoMedia => {
                let mut r = String::new();
                for chain in ["policy_in", "policy_out"] {
                    r.push_str(&format!(
                        "add rule inet {TABLE} {chain} meta l4proto udp counter drop\n\
                         add rule inet {TABLE} {chain} meta l4proto tcp @ih,32,32 0x2112a442 counter drop\n\
                         add rule inet {TABLE} {chain} meta l4proto tcp @ih,48,32 0x2112a442 counter drop\n"
                    ));
                }
                r
            }
            Policy::OnlyTcpTo(port) => format!(
                "add rule inet {TABLE} policy_in tcp sport {port} return\n\
                 add rule inet {TABLE} policy_in counter drop\n\
                 add rule inet {TABLE} policy_out tcp dport {port} return\n\
                 add rule inet {TABLE} policy_out counter drop\n"
            ),
        };
        self.nft(&format!(
            "flush chain inet {TABLE} policy_in\nflush chain inet {TABLE} policy_out\n{rules}"
        ));
    }

    /// Drops `percent` % of the packets crossing the browser's veth, in each direction independently
    /// (nftables `numgen random mod 100`); 0 ends the loss.
    pub fn set_loss(&self, percent: u8) {
        assert!(percent <= 100, "a loss of {percent} %");
        let rule = if percent == 0 {
            String::new()
        } else {
            format!("add rule inet {TABLE} loss numgen random mod 100 < {percent} counter drop\n")
        };
        self.nft(&format!("flush chain inet {TABLE} loss\n{rule}"));
    }

    /// Starts a total outage: every packet across the browser's veth is dropped until [`Self::end_outage`].
    pub fn start_outage(&self) {
        self.nft(&format!(
            "flush chain inet {TABLE} outage\nadd rule inet {TABLE} outage counter drop\n"
        ));
    }

    /// Ends an outage.
    pub fn end_outage(&self) {
        self.nft(&format!("flush chain inet {TABLE} outage\n"));
    }

    /// Caps the rate across the veth at `kbit` kbit/s in each direction: a `tc` token bucket (tbf) on each end's
    /// egress (the browser's uploads leave through its end, its downloads through the server's end).
    /// The bucket holds 20 ms at the rate (at least 3 full-size packets); the queue holds 200 ms beyond
    /// which packets are dropped, as a congested access link would.
    pub fn set_rate(&self, kbit: u32) {
        let burst = (kbit as u64 * 1000 / 8 / 50).max(3 * 1514);
        for ns in [&self.browser, &self.server] {
            ip(&[
                "netns",
                "exec",
                &ns.name,
                "tc",
                "qdisc",
                "replace",
                "dev",
                ns.interface,
                "root",
                "tbf",
                "rate",
                &format!("{kbit}kbit"),
                "burst",
                &burst.to_string(),
                "latency",
                "200ms",
            ]);
        }
    }

    /// Removes the rate cap.
    pub fn clear_rate(&self) {
        for ns in [&self.browser, &self.server] {
            ip(&[
                "netns",
                "exec",
                &ns.name,
                "tc",
                "qdisc",
                "del",
                "dev",
                ns.interface,
                "root",
            ]);
        }
    }

    /// `tc -s qdisc show` of one end's veth: the token bucket's figures (sent, dropped, overlimits).
    pub fn qdisc_stats(&self, ns: &Ns) -> String {
        let out = output_of(Command::new("ip").args([
            "netns",
            "exec",
            &ns.name,
            "tc",
            "-s",
            "qdisc",
            "show",
            "dev",
            ns.interface,
        ]));
        assert!(
            out.status.success(),
            "tc -s qdisc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Packets the browser's nftables rules dropped so far, by cause.
    pub fn drops(&self) -> Drops {
        let out = output_of(Command::new("ip").args([
            "netns",
            "exec",
            &self.browser.name,
            "nft",
            "-j",
            "list",
            "table",
            "inet",
            TABLE,
        ]));
        assert!(
            out.status.success(),
            "nft list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft -j prints JSON");
        let mut drops = Drops::default();
        for item in v["nftables"].as_array().into_iter().flatten() {
            let rule = &item["rule"];
            let Some(chain) = rule["chain"].as_str() else { continue };
            let packets: u64 = rule["expr"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["counter"]["packets"].as_u64())
                .sum();
            match chain {
                "policy_in" | "policy_out" => drops.policy += packets,
                "loss" => drops.loss += packets,
                "outage" => drops.outage += packets,
                _ => {}
            }
        }
        drops
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        delete(&self.browser.name);
        delete(&self.server.name);
    }
}

impl Ns {
    /// `ip netns exec NAME PROGRAM`: a command whose process runs inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Moves the calling thread into this namespace (sockets it makes and processes it spawns live there).
    fn enter(&self) -> Result<(), String> {
        let fd = File::open(format!("/run/netns/{}", self.name))
            .map_err(|e| format!("namespace {} is gone: {e}", self.name))?;
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns into {}: {e}", self.name))
    }

    /// Runs `f` on a new thread inside this namespace and returns its result (a panic in `f` fails the caller).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.try_run(f).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::run`], or why the thread could not enter the namespace (for clean-up paths, which must not panic).
    pub fn try_run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        let ns = self.clone();
        std::thread::spawn(move || ns.enter().map(|()| f()))
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// A multi-thread Tokio runtime (2 workers) whose threads all live in this namespace: tasks spawned on it
    /// (`rt.spawn(…)`, then await the handle) bind, connect and spawn processes there. Not `rt.block_on` from
    /// outside: that polls on the calling thread, in the caller's namespace. End it with `shutdown_background`
    /// or `shutdown_timeout` (dropping a runtime inside another's task panics).
    pub fn runtime(&self) -> tokio::runtime::Runtime {
        self.run(|| {
            // The workers start now, from this thread, and inherit its namespace; so do the blocking threads
            // they spawn later.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        })
    }
}
