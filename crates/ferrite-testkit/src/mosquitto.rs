//! A real Mosquitto broker (Debian's `mosquitto`) on a free loopback port, killed when dropped.
//!
//! Ferrite's services must work against any standard broker; tests use this one to prove it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use ferrite_mqtt::BrokerUrl;

/// A running Mosquitto.
pub struct TestMosquitto {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn binary() -> Option<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

impl TestMosquitto {
    /// Starts Mosquitto with anonymous access on 127.0.0.1, no persistence, and queues large enough
    /// that a consumer which acknowledges in batches is never the reason a message is dropped.
    pub fn start() -> anyhow::Result<TestMosquitto> {
        let binary = binary().context("mosquitto not found: apt install mosquitto")?;
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 100000\nmax_inflight_messages 0\n"
            ),
        )?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start mosquitto")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut broker = TestMosquitto { child, addr, _dir: dir };
        for _ in 0..500 {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(broker);
            }
            if let Some(status) = broker.child.try_wait()? {
                anyhow::bail!("mosquitto exited at start-up with {status}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        anyhow::bail!("mosquitto did not listen on {addr} within 5 s")
    }

    pub fn url(&self) -> BrokerUrl {
        BrokerUrl::Tcp { host: self.addr.ip().to_string(), port: self.addr.port() }
    }
}

impl Drop for TestMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
