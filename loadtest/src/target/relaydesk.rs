//! The full RelayDesk flow. (Filled in step by step as the server's WebSocket API lands.)

use std::net::IpAddr;
use std::sync::Arc;

use super::{Ctx, StageFailure, Target};
use crate::cli::RunArgs;
use crate::http::Client;

/// Options of the RelayDesk target taken from the command line.
#[derive(Debug, Clone)]
pub struct RelayDeskOptions {
    /// Create group, key and agents first.
    pub setup: bool,
}

impl RelayDeskOptions {
    /// From the command line.
    pub fn from_args(args: &RunArgs) -> Result<Self, String> {
        Ok(RelayDeskOptions { setup: args.setup })
    }
}

/// The RelayDesk target.
pub struct RelayDeskTarget {
    http: Client,
    _tls: Arc<rustls::ClientConfig>,
    _media_ip: IpAddr,
    _opts: RelayDeskOptions,
}

impl RelayDeskTarget {
    /// A target for the server behind `http`.
    pub fn new(http: Client, tls: Arc<rustls::ClientConfig>, media_ip: IpAddr, opts: RelayDeskOptions) -> Self {
        RelayDeskTarget {
            http,
            _tls: tls,
            _media_ip: media_ip,
            _opts: opts,
        }
    }
}

impl Target for RelayDeskTarget {
    fn name(&self) -> &'static str {
        "relaydesk"
    }
    async fn preflight(&self) -> Result<(), String> {
        self.http
            .request("GET", "/healthz", &[], None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
    async fn alive(&self) -> bool {
        self.http.request("GET", "/healthz", &[], None).await.is_ok()
    }
    async fn conversation(&self, _index: u64, _ctx: &Ctx) -> Result<(), StageFailure> {
        Err(StageFailure::new("token", "not implemented"))
    }
}
