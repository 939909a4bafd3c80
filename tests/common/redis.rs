//! A Redis of a test's own: the machine's `redis-server` (which `cargo xtask test` installs) on a free port,
//! keeping nothing on disk, so a test may stop and restart it.

use std::time::{Duration, Instant};

/// Bound of waiting for it to listen.
const WAIT: Duration = Duration::from_secs(30);

/// A free TCP port on loopback (for a Redis of a test's own).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Redis of this test's own (the machine's `redis-server`, which `cargo xtask test` installs), on a free
/// port, keeping nothing on disk; killed when dropped.
pub struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    pub fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (cargo xtask test installs it)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < WAIT, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
