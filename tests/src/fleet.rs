//! The distributor as a real binary, and edges joined to it, for the fleet tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::edge::{binary, EdgeProcess};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
pub const EDGE_TOKEN: &str = "edge-token-for-tests";

/// The real `berth-distributor`; killed when dropped.
pub struct DistributorProcess {
    pub child: Child,
    pub addr: std::net::SocketAddr,
}

impl DistributorProcess {
    /// Starts the binary on `addr` (fixed, so a restart keeps the address edges know) with its
    /// store under `dir`.
    pub fn start(dir: &Path, addr: std::net::SocketAddr, keep_events: u64, log: &Path) -> DistributorProcess {
        let config = dir.join("distributor.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\nhttp = \"{addr}\"\n[store]\ndir = {:?}\n[log]\nkeep_events = {keep_events}\n[watch]\nkeepalive = \"1s\"\n",
                dir.join("store").display().to_string()
            ),
        )
        .expect("distributor config");
        let mut child = Command::new(binary("berth-distributor"))
            .arg("--config")
            .arg(&config)
            .env("BERTH_ADMIN_TOKENS", ADMIN_TOKEN)
            .env("BERTH_EDGE_TOKENS", EDGE_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start berth-distributor");
        let ready = crate::tools::follow_output(&mut child, log, |line| {
            line.contains("distributor ready to serve").then_some(())
        });
        assert!(
            ready.is_some(),
            "berth-distributor did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        DistributorProcess { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DistributorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port on 127.0.0.1 (for a server that must restart on the same address).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port")
}

/// Writes the config of an edge in `region` joined to the distributor, with `origin` as its
/// default upstream named `registry.test`; returns the config path.
pub fn edge_config(dir: &Path, name: &str, region: &str, distributor: &str, origin: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "region = \"{region}\"\nnode_id = \"{name}\"\n[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\n[distributor]\nurl = \"{distributor}\"\ntoken_env = \"BERTH_EDGE_TOKEN\"\nreport_interval = \"200ms\"\nstartup_sync_timeout = \"5s\"\n[[upstream]]\nname = \"registry.test\"\nurl = \"{origin}\"\ndefault = true\n",
            dir.join(format!("{name}-cache")).display().to_string()
        ),
    )
    .expect("edge config");
    path
}

/// Starts an edge binary with the edge token in its environment.
pub fn start_edge(config: &Path, log: &Path) -> EdgeProcess {
    std::env::set_var("BERTH_EDGE_TOKEN", EDGE_TOKEN);
    EdgeProcess::start(config, log)
}

/// Runs `berthctl` against a distributor; returns (exit code, stdout + stderr).
pub fn berthctl(distributor: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(binary("berthctl"))
        .args(["--server", distributor, "--token", ADMIN_TOKEN])
        .args(args)
        .output()
        .expect("berthctl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}
