//! Command-line interface: `relaydesk serve` and the offline admin commands (`user`, `group`, `key`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use relaydesk_signalling::config::Overrides;
use relaydesk_signalling::store::{RecordingPolicy, Role};

/// RelayDesk: contact-centre chat, calls and file transfer through one server.
#[derive(Debug, Parser)]
#[command(name = "relaydesk", version, about, propagate_version = true)]
pub struct Cli {
    /// Data directory (database, generated certificate). Env RELAYDESK_DATA_DIR; default ./relaydesk-data.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file (see config/relaydesk.example.toml). Env RELAYDESK_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// PostgreSQL store shared by several nodes (postgres://user@host/db); default: SQLite in the data
    /// directory. Env RELAYDESK_DATABASE_URL; `[database] url` in the file.
    #[arg(long, global = true, value_name = "URL")]
    pub database: Option<String>,
    /// Redis of the cluster's node registry (redis://host[:port][/db]); default: a single node, no
    /// registry. Env RELAYDESK_CLUSTER_URL; `[cluster] redis_url` in the file.
    #[arg(long, global = true, value_name = "URL")]
    pub cluster: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (HTTPS API; creates the data directory, database and certificate if needed).
    Serve(ServeArgs),
    /// Manage users (offline, on the data directory).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage groups (offline).
    #[command(subcommand)]
    Group(GroupCommand),
    /// Manage site keys (offline).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Mask chat lines from stdin as the agent would see them (one message per line; test a policy).
    Mask(MaskArgs),
    /// Export or purge archived transcripts (offline, on the data directory).
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Manage the archive's master key (offline).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The cluster's nodes (reads the registry in Redis; needs --cluster or `[cluster] redis_url`).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the registered nodes: id, addresses, load, age of the last heartbeat.
    Status {
        /// Print JSON (an array of node records) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `mask` flags.
#[derive(Debug, Args)]
pub struct MaskArgs {
    /// Masking policy (TOML, see docs/masking.md). Default: the built-in policy.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

/// Export format of `archive export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The transcript as JSON (as the HTTP export returns it).
    Json,
    /// One line per message.
    Text,
}

/// `archive` subcommands.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Print the decrypted (masked) transcript of an archived conversation; audited. With --recording, write
    /// the conversation's call recording (decrypted WebM) to FILE instead.
    Export {
        /// The conversation id.
        #[arg(long)]
        conversation: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "json")]
        format: ExportFormat,
        /// Write the call recording (WebM) to this file (created; never overwritten).
        #[arg(long, value_name = "FILE")]
        recording: Option<std::path::PathBuf>,
        /// Which recording (`{conversation}-{n}`, see `archive recordings`); default the latest.
        #[arg(long, value_name = "ID", requires = "recording")]
        recording_id: Option<String>,
    },
    /// List the call recordings of a conversation.
    Recordings {
        /// The conversation id.
        #[arg(long)]
        conversation: String,
    },
    /// Erase archived conversations: those that ended more than N days ago, or one visitor's; audited.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["older_than_days", "visitor"]))]
    Purge {
        /// Erase conversations that ended more than this many days ago (0: all that ended before now).
        #[arg(long, value_name = "N")]
        older_than_days: Option<u32>,
        /// Erase every conversation of this visitor id.
        #[arg(long, value_name = "ID")]
        visitor: Option<String>,
    },
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Replace the master key: a new key file, every conversation key re-wrapped in one transaction, then
    /// the old key file replaced (crash-safe; run again to finish an interrupted rotation).
    Rotate,
}

/// `serve` flags; each overrides its `RELAYDESK_*` variable and the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTPS listen address. Env RELAYDESK_LISTEN; default 127.0.0.1:8443.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain (with --tls-key). Env RELAYDESK_TLS_CERT. Default: self-signed, generated.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (with --tls-cert). Env RELAYDESK_TLS_KEY.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Origin browsers use to reach this server, e.g. https://desk.example. Env RELAYDESK_PUBLIC_ORIGIN.
    #[arg(long, value_name = "URL")]
    pub public_origin: Option<String>,
    /// File with the first admin's password (only used when no admin exists). Env RELAYDESK_ADMIN_PASSWORD_FILE.
    #[arg(long, value_name = "FILE")]
    pub admin_password_file: Option<PathBuf>,
    /// Log filter, e.g. info or relaydesk_signalling=debug. Env RELAYDESK_LOG; default info.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// IP address the SFU's UDP sockets bind to. Env RELAYDESK_MEDIA_BIND; default 127.0.0.1.
    #[arg(long, value_name = "IP")]
    pub media_bind: Option<std::net::IpAddr>,
    /// IP address browsers are told to send media to (NAT, wildcard binds). Env RELAYDESK_MEDIA_ANNOUNCE.
    #[arg(long, value_name = "IP")]
    pub media_announce: Option<std::net::IpAddr>,
    /// This node's id in the cluster's registry. Env RELAYDESK_NODE_ID; default the host name.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|_| format!("unknown role {s:?}: expected agent, supervisor or admin"))
}

/// `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. Without --password-stdin a password is generated and printed once.
    Add {
        /// Login name.
        name: String,
        /// Role: agent, supervisor or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Group to join (repeatable; the group must exist).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Name shown to others (default: the login name).
        #[arg(long, default_value = "")]
        display_name: String,
        /// Most conversations handled at once.
        #[arg(long, default_value_t = 4)]
        max_conversations: u32,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Set a user's password (ends their sessions). Without --password-stdin one is generated and printed.
    Passwd {
        /// Login name.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user: no login, sessions end.
    Disable {
        /// Login name.
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        /// Login name.
        name: String,
    },
}

/// `group` subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group.
    Add {
        /// Group name.
        name: String,
        /// Whether the group's calls are recorded: off, always or on_request.
        #[arg(long, default_value = "off", value_parser = parse_recording)]
        recording: RecordingPolicy,
    },
    /// Change a group's settings.
    Set {
        /// Group name.
        name: String,
        /// Whether the group's calls are recorded: off, always or on_request.
        #[arg(long, value_parser = parse_recording)]
        recording: RecordingPolicy,
    },
    /// List groups.
    List,
}

fn parse_recording(s: &str) -> Result<RecordingPolicy, String> {
    s.parse()
        .map_err(|e: relaydesk_signalling::store::StoreError| e.to_string())
}

/// `key` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a site key for a group and its allowed origins; prints the key.
    Add {
        /// The group visitors of this key are routed to.
        #[arg(long)]
        group: String,
        /// Allowed origin, exactly scheme://host[:port] (repeatable, at least one).
        #[arg(long = "origin", value_name = "URL", required = true)]
        origins: Vec<String>,
        /// Free text shown in listings.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List site keys.
    List,
    /// Revoke a site key.
    Revoke {
        /// The key (pk_…).
        key: String,
    },
}

impl Cli {
    /// The flag layer of the configuration.
    pub fn overrides(&self) -> Overrides {
        let mut o = Overrides {
            data_dir: self.data_dir.clone(),
            config_file: self.config.clone(),
            database_url: self.database.clone(),
            cluster_url: self.cluster.clone(),
            ..Default::default()
        };
        if let Command::Serve(s) = &self.command {
            o.listen = s.listen;
            o.tls_cert = s.tls_cert.clone();
            o.tls_key = s.tls_key.clone();
            o.public_origin = s.public_origin.clone();
            o.admin_password_file = s.admin_password_file.clone();
            o.log = s.log.clone();
            o.media_bind = s.media_bind;
            o.media_announce = s.media_announce;
            o.node_id = s.node_id.clone();
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaydesk_signalling::config::{Config, FileConfig, env_from_map};
    use std::collections::HashMap;

    #[test]
    fn flags_beat_env_beat_file() {
        let cli = Cli::try_parse_from(["relaydesk", "--data-dir", "/flag", "serve", "--log", "debug"]).unwrap();
        let env: HashMap<String, String> = [
            ("RELAYDESK_DATA_DIR", "/env"),
            ("RELAYDESK_LOG", "warn"),
            ("RELAYDESK_LISTEN", "127.0.0.1:1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let env_layer = Overrides::from_env(env_from_map(&env)).unwrap();
        let file = FileConfig::parse(
            "listen = \"127.0.0.1:2\"\npublic_origin = \"https://desk.example\"",
            "f".as_ref(),
        )
        .unwrap();
        let c = Config::merge(cli.overrides().over(env_layer), file).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/flag"));
        assert_eq!(c.log, "debug");
        assert_eq!(c.listen.to_string(), "127.0.0.1:1");
        assert_eq!(c.public_origin.as_deref(), Some("https://desk.example"));
    }

    #[test]
    fn the_database_comes_from_the_flag_the_env_or_the_file() {
        let env: HashMap<String, String> = [("RELAYDESK_DATABASE_URL", "postgres://env@h/db")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env_layer = || Overrides::from_env(env_from_map(&env)).unwrap();
        let file = || {
            FileConfig::parse(
                "[database]\nurl = \"postgres://file@h/db\"\npool_size = 3",
                "f".as_ref(),
            )
            .unwrap()
        };
        // An offline command takes the flag too (it works on the same database as the server).
        let cli = Cli::try_parse_from(["relaydesk", "user", "list", "--database", "postgres://flag@h/db"]).unwrap();
        let c = Config::merge(cli.overrides().over(env_layer()), file()).unwrap();
        assert_eq!(c.database.url.as_deref(), Some("postgres://flag@h/db"));
        assert_eq!(c.database.pool_size, 3);
        let cli = Cli::try_parse_from(["relaydesk", "serve"]).unwrap();
        let c = Config::merge(cli.overrides().over(env_layer()), file()).unwrap();
        assert_eq!(c.database.url.as_deref(), Some("postgres://env@h/db"));
        let c = Config::merge(cli.overrides(), file()).unwrap();
        assert_eq!(c.database.url.as_deref(), Some("postgres://file@h/db"));
        let c = Config::merge(cli.overrides(), FileConfig::default()).unwrap();
        assert_eq!(c.database.url, None, "SQLite in the data directory by default");
        let cli = Cli::try_parse_from(["relaydesk", "serve", "--database", "mysql://u:secret@h/db"]).unwrap();
        let err = Config::merge(cli.overrides(), FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("postgres://") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn the_cluster_comes_from_the_flag_the_env_or_the_file() {
        let env: HashMap<String, String> = [
            ("RELAYDESK_CLUSTER_URL", "redis://env:6379"),
            ("RELAYDESK_NODE_ID", "env-node"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let env_layer = || Overrides::from_env(env_from_map(&env)).unwrap();
        let file = || {
            FileConfig::parse(
                "[cluster]\nredis_url = \"redis://file:6379\"\nnode_id = \"file-node\"\nttl_ms = 9000",
                "f".as_ref(),
            )
            .unwrap()
        };
        let cli = Cli::try_parse_from([
            "relaydesk",
            "serve",
            "--cluster",
            "redis://flag:6379",
            "--node-id",
            "flag-node",
        ])
        .unwrap();
        let c = Config::merge(cli.overrides().over(env_layer()), file()).unwrap();
        assert_eq!(c.cluster.redis_url.as_deref(), Some("redis://flag:6379"));
        assert_eq!(c.cluster.node_id.as_deref(), Some("flag-node"));
        assert_eq!(c.cluster.ttl_ms, 9000);
        // `cluster status` takes the flag too.
        let cli = Cli::try_parse_from(["relaydesk", "cluster", "status", "--cluster", "redis://flag2:6379"]).unwrap();
        let c = Config::merge(cli.overrides().over(env_layer()), file()).unwrap();
        assert_eq!(c.cluster.redis_url.as_deref(), Some("redis://flag2:6379"));
        let cli = Cli::try_parse_from(["relaydesk", "serve"]).unwrap();
        let c = Config::merge(cli.overrides().over(env_layer()), file()).unwrap();
        assert_eq!(
            (c.cluster.redis_url.as_deref(), c.cluster.node_id.as_deref()),
            (Some("redis://env:6379"), Some("env-node"))
        );
        let c = Config::merge(cli.overrides(), file()).unwrap();
        assert_eq!(c.cluster.redis_url.as_deref(), Some("redis://file:6379"));
        let c = Config::merge(cli.overrides(), FileConfig::default()).unwrap();
        assert_eq!(c.cluster.redis_url, None, "no registry by default");
        let cli =
            Cli::try_parse_from(["relaydesk", "serve", "--cluster", "http://u:secret@h", "--node-id", "x"]).unwrap();
        let err = Config::merge(cli.overrides(), FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.redis_url") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn bad_role_and_half_tls_are_usage_errors() {
        assert!(Cli::try_parse_from(["relaydesk", "user", "add", "x", "--role", "boss"]).is_err());
        assert!(Cli::try_parse_from(["relaydesk", "serve", "--tls-cert", "c.pem"]).is_err());
        assert!(
            Cli::try_parse_from(["relaydesk", "key", "add", "--group", "g"]).is_err(),
            "origin required"
        );
    }
}
