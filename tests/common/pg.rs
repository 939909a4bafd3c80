//! A PostgreSQL schema of a test's own, in the database at `RELAYDESK_TEST_POSTGRES` (`cargo xtask test`
//! sets it and starts PostgreSQL where none runs; default `postgres://postgres@127.0.0.1:5432/postgres`),
//! dropped when the test ends. The blocking client runs a runtime of its own, so its work happens on a
//! thread of its own: these helpers may be called from async tests.

use postgres::{Client, NoTls};

/// The database the tests use.
pub fn base_url() -> String {
    std::env::var("RELAYDESK_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh schema; [`PgSchema::url`] points a server (or the CLI) at it.
pub struct PgSchema {
    name: String,
    base: String,
}

impl PgSchema {
    /// Creates `relaydesk_it_<pid>_<n>`.
    pub fn create() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = base_url();
        let name = format!(
            "relaydesk_it_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let sql = format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}");
        let url = base.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(&url, NoTls)
                .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed (cargo xtask test starts one): {e}"));
            c.batch_execute(&sql).unwrap();
        })
        .join()
        .unwrap();
        Self { name, base }
    }

    /// The URL of this schema (`options=-c search_path=…`).
    pub fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.base, self.name)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, sql) = (
            self.base.clone(),
            format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        );
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = Client::connect(&url, NoTls) {
                let _ = c.batch_execute(&sql);
            }
        })
        .join();
    }
}
