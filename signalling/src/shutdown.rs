//! The shutdown signal: a cloneable trigger that the server, the archive and long-lived tasks watch.

use std::sync::Arc;

use tokio::sync::watch;

/// Triggers a graceful shutdown; cloneable.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// A handle that has not been triggered.
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    /// Asks the server to stop. Idempotent.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }

    /// True once a shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a shutdown was requested (at once if it already was).
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move { stopped(&mut rx).await }
    }

    /// A receiver of the flag, for loops that select on [`stopped`].
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

impl Default for ShutdownHandle {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves once shutdown was requested (or the handle is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard returned by `wait_for` is dropped here, before any other await.
    let _ = rx.wait_for(|&s| s).await.map(|_| ());
}
