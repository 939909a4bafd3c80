//! Which backend a server or the offline CLI opens: SQLite in the data directory (the default, nothing to
//! configure), or PostgreSQL (`[database] url`, `--database`, `RELAYDESK_DATABASE_URL`) for several nodes
//! sharing one store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::postgres::{PgOptions, PgStore};
use super::{Db, Storage, StoreError};

/// The `[database]` section.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// None: SQLite in the data directory. `postgres://user[:password]@host[:port]/database`: PostgreSQL
    /// (`?sslmode=require` for TLS, verified; `&options=-c search_path=SCHEMA` for a schema of its own).
    /// Shown with its password hidden.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: Option<String>,
    /// Most PostgreSQL connections a node opens.
    pub pool_size: u32,
    /// Seconds a store call waits for a PostgreSQL connection (and a connection for its server) before
    /// the call fails as unavailable.
    pub connect_timeout_secs: u64,
    /// PEM file of the certificates that sign the PostgreSQL server's certificate (`sslmode=require`).
    /// None: the web PKI's roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 16,
            connect_timeout_secs: 5,
            ca_file: None,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn serialize_redacted<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    url.as_deref().map(redact_url).serialize(s)
}

/// `url` with the password of its user part (and any `password=` parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    // Everything before the last `@` is the user part, whatever it holds (a password may hold `/` or `?`
    // when it is not percent-encoded): only the name before its first `:` is shown.
    let (user, after) = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let name = userinfo.split(':').next().unwrap_or_default();
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            (format!("{name}{hidden}@"), &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    let after = match after.split_once('?') {
        Some((path, query)) => format!("{path}?{}", redact_query(query)),
        None => after.to_string(),
    };
    format!("{scheme}://{user}{after}")
}

/// A query string with any `password=` value hidden.
fn redact_query(q: &str) -> String {
    q.split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl DatabaseConfig {
    /// Checks the section: a PostgreSQL URL that parses, sane pool and timeout.
    ///
    /// # Errors
    /// A message naming the bad key (never the password).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(format!(
                    "database url {} must start with postgres:// (leave it out for SQLite in the data directory)",
                    redact_url(url)
                ));
            }
            postgres::Config::from_str(url).map_err(|e| format!("database url {}: {e}", redact_url(url)))?;
        }
        if !(1..=1000).contains(&self.pool_size) {
            return Err("database pool_size must be from 1 to 1000".into());
        }
        if !(1..=300).contains(&self.connect_timeout_secs) {
            return Err("database connect_timeout_secs must be from 1 to 300".into());
        }
        Ok(())
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.url.is_some()
    }
}

/// Opens the configured backend: SQLite in `data_dir`, or PostgreSQL (sealed recordings still go to
/// `data_dir`), running pending migrations. Blocking.
///
/// # Errors
/// As [`Db::open`] and [`PgStore::open`].
pub fn open(database: &DatabaseConfig, data_dir: &Path) -> Result<Arc<dyn Storage>, StoreError> {
    match &database.url {
        None => Ok(Arc::new(Db::open(data_dir)?)),
        Some(url) => {
            super::create_data_dir(data_dir)?;
            let options = PgOptions {
                pool_size: database.pool_size,
                connect_timeout: Duration::from_secs(database.connect_timeout_secs),
                data_dir: data_dir.to_path_buf(),
                ca_file: database.ca_file.clone(),
            };
            Ok(Arc::new(PgStore::open(url, &options)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        for (url, shown) in [
            ("postgres://u:secret@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?password=secret&sslmode=require",
                "postgres://h/db?password=***&sslmode=require",
            ),
            (
                "postgresql://u:p%40ss@h/db?options=-c%20search_path%3Dx",
                "postgresql://u:***@h/db?options=-c%20search_path%3Dx",
            ),
            ("postgres://u:pa/ss?x@h/db", "postgres://u:***@h/db"),
            ("nonsense secret", "***"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
        let c = DatabaseConfig {
            url: Some("postgres://u:secret@h/db".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("secret"));
        assert!(!serde_json::to_string(&c).unwrap_or_default().contains("secret"));
    }

    #[test]
    fn bad_sections_are_refused_with_the_key_named() {
        let mut c = DatabaseConfig {
            url: Some("mysql://u:secret@h/db".into()),
            ..Default::default()
        };
        let err = c.validate().unwrap_err();
        assert!(err.contains("postgres://") && !err.contains("secret"), "{err}");
        c.url = Some("postgres://u:secret@h:notaport/db".into());
        let err = c.validate().unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        c.url = None;
        c.pool_size = 0;
        assert!(c.validate().unwrap_err().contains("pool_size"));
        c.pool_size = 4;
        assert!(c.validate().is_ok());
    }
}
