//! `relaydesk cluster status`: the nodes in the cluster's registry, as a table or JSON.

use std::io::Write as _;

use relaydesk_signalling::cluster::{self, ClusterError, NodeRecord, NodeRole};
use relaydesk_signalling::config::Config;

use crate::cli::ClusterCommand;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Runs a `cluster` subcommand.
pub fn run(command: &ClusterCommand, config: &Config) -> Result<()> {
    match command {
        ClusterCommand::Status { json } => status(config, *json),
    }
}

fn status(config: &Config, json: bool) -> Result<()> {
    if config.cluster.redis_url.is_none() {
        return Err(Box::new(ClusterError::NotConfigured));
    }
    let (nodes, unreadable) = cluster::list_blocking(&config.cluster)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &nodes)?;
        writeln!(out)?;
    } else {
        out.write_all(table(&nodes).as_bytes())?;
    }
    if unreadable > 0 {
        eprintln!("warning: {unreadable} registry record(s) could not be read (another version, or not ours)");
    }
    Ok(())
}

/// The table `cluster status` prints: one line a node, then a line of totals naming the leader.
fn table(nodes: &[NodeRecord]) -> String {
    let mut s = format!(
        "{:<24} {:<8} {:<22} {:<16} {:>5} {:>6} {:>9}\n",
        "NODE", "ROLE", "LISTEN", "MEDIA", "OPEN", "QUEUED", "HEARTBEAT"
    );
    for n in nodes {
        s.push_str(&format!(
            "{:<24} {:<8} {:<22} {:<16} {:>5} {:>6} {:>7}ms\n",
            n.id,
            n.role.as_str(),
            n.listen,
            n.media_address.as_deref().unwrap_or("-"),
            n.conversations,
            n.queued,
            n.age_ms(),
        ));
    }
    let open: u64 = nodes.iter().map(|n| n.conversations).sum();
    let queued: u64 = nodes.iter().map(|n| n.queued).sum();
    let leaders: Vec<&str> = nodes
        .iter()
        .filter(|n| n.role == NodeRole::Leader)
        .map(|n| n.id.as_str())
        .collect();
    let leading = match leaders.as_slice() {
        [] => "no leader: no conversation is served".to_owned(),
        [one] => format!("{one} leads: every conversation is there"),
        many => format!("leaders {} (nodes on separate databases)", many.join(", ")),
    };
    s.push_str(&format!(
        "{} node(s), {open} open conversation(s), {queued} of them queued; {leading}\n",
        nodes.len()
    ));
    s
}
