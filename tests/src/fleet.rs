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
    tls: bool,
}

impl DistributorProcess {
    /// Starts the binary on `listener`, handed over by socket activation (the test keeps it
    /// bound, so a restart keeps the address edges know, with no window in which another
    /// process could take the port), with its store under `dir`.
    pub fn start(dir: &Path, listener: &std::net::TcpListener, keep_events: u64, log: &Path) -> DistributorProcess {
        Self::start_with(dir, listener, keep_events, log, None)
    }

    /// The same, serving over TLS with `tls` (certificate, key) when given.
    pub fn start_with(
        dir: &Path,
        listener: &std::net::TcpListener,
        keep_events: u64,
        log: &Path,
        tls: Option<(&Path, &Path)>,
    ) -> DistributorProcess {
        Self::start_configured(dir, listener, keep_events, log, tls, "")
    }

    /// The same with `extra` TOML appended to its config (e.g. `[hooks]` rules).
    pub fn start_configured(
        dir: &Path,
        listener: &std::net::TcpListener,
        keep_events: u64,
        log: &Path,
        tls: Option<(&Path, &Path)>,
        extra: &str,
    ) -> DistributorProcess {
        Self::start_full(dir, listener, (keep_events, None), log, tls, extra)
    }

    /// A replica on a PostgreSQL store at `postgres_url`.
    pub fn start_on_postgres(
        dir: &Path,
        listener: &std::net::TcpListener,
        postgres_url: &str,
        log: &Path,
    ) -> DistributorProcess {
        Self::start_full(dir, listener, (100, Some(postgres_url)), log, None, "")
    }

    fn start_full(
        dir: &Path,
        listener: &std::net::TcpListener,
        (keep_events, postgres_url): (u64, Option<&str>),
        log: &Path,
        tls: Option<(&Path, &Path)>,
        extra: &str,
    ) -> DistributorProcess {
        let postgres = postgres_url.map(str::to_owned).or_else(test_postgres);
        let postgres = postgres_table(postgres.as_deref());
        let addr = listener.local_addr().expect("listener address");
        let tls_table = tls.map_or(String::new(), |(cert, key)| {
            format!("[tls]\ncert = {:?}\nkey = {:?}\n", cert.display().to_string(), key.display().to_string())
        });
        let config = dir.join("distributor.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\nhttp = \"{addr}\"\n{tls_table}[store]\ndir = {:?}\n{postgres}[log]\nkeep_events = {keep_events}\n[watch]\nkeepalive = \"1s\"\n{extra}",
                dir.join("store").display().to_string()
            ),
        )
        .expect("distributor config");
        let mut command = Command::new(binary("berth-distributor"));
        let fd = std::os::fd::AsRawFd::as_raw_fd(listener);
        // SAFETY: dup2 and fcntl are async-signal-safe; it makes the listener the child's fd 3, without
        // close-on-exec, as socket activation passes it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                // dup2 onto itself keeps close-on-exec: a listener that is fd 3 already has
                // the flag cleared instead.
                let done = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
                if done < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .arg("--config")
            .arg(&config)
            .env("LISTEN_FDS", "1")
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
        DistributorProcess { child, addr, tls: tls.is_some() }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// SIGTERM, as systemd stops it, and waits for the exit (the test runner bounds the wait).
    pub fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
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

tokio::task_local! {
    /// The PostgreSQL the running fleet test puts its distributors on (`None`: the embedded store).
    static POSTGRES: Option<String>;
}

/// Runs a fleet test with every distributor it starts on a fresh, real PostgreSQL (the test's
/// own task only: a distributor started from a spawned task uses the embedded store).
pub async fn on_postgres<F: std::future::Future>(test: F) -> F::Output {
    let pg = crate::postgres::Postgres::start();
    let out = POSTGRES.scope(Some(pg.url()), test).await;
    // The test's distributors must have used it: a variant that silently ran on the embedded
    // store would pass without proving anything about PostgreSQL.
    let url = pg.url();
    let written = std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect to the test's PostgreSQL");
        let sql = "SELECT (SELECT count(*) FROM berth_events) + (SELECT count(*) FROM berth_edges)";
        client.query_one(sql, &[]).map(|row| row.get::<_, i64>(0))
    })
    .join()
    .expect("the PostgreSQL check ran");
    assert!(
        written.as_ref().is_ok_and(|n| *n > 0),
        "the test's distributors wrote no event or edge to PostgreSQL: {written:?}"
    );
    out
}

/// The PostgreSQL URL of the running fleet test, when it runs on PostgreSQL.
fn test_postgres() -> Option<String> {
    POSTGRES.try_with(Clone::clone).ok().flatten()
}

/// The store keys for a PostgreSQL at `url`, with a recheck far beyond any test's deadline:
/// changes must travel by NOTIFY.
fn postgres_table(url: Option<&str>) -> String {
    url.map_or(String::new(), |u| format!("postgres_url = {u:?}\nrecheck = \"1h\"\n"))
}

/// The `[store]` table of a distributor the running test starts in-process: its folder `dir`,
/// and the test's PostgreSQL when it runs on one.
pub fn store_table(dir: &Path) -> String {
    format!("[store]\ndir = {:?}\n{}", dir.display().to_string(), postgres_table(test_postgres().as_deref()))
}

/// A distributor in the test's own process, on the embedded store under `dir` (or the test's
/// PostgreSQL, [`on_postgres`]), with the test tokens in files that live as long as it.
pub struct InProcessDistributor {
    pub distributor: berth_distributor::RunningDistributor,
    /// The file holding [`EDGE_TOKEN`], for an edge's `[distributor] token_file`.
    pub edge_token: tempfile::TempPath,
    _admin_tokens: tempfile::TempPath,
}

impl InProcessDistributor {
    /// Starts one; `extra` is TOML appended to its config (e.g. `[log]` keys).
    pub fn start(dir: &Path, extra: &str) -> InProcessDistributor {
        let (admin_tokens, edge_token) = (crate::secret_file(ADMIN_TOKEN), crate::secret_file(EDGE_TOKEN));
        let config = berth_distributor::config::parse(&format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n{}[auth]\nadmin_tokens_file = {:?}\nedge_tokens_file = {:?}\n{extra}",
            store_table(&dir.join("store")),
            admin_tokens.display().to_string(),
            edge_token.display().to_string(),
        ))
        .expect("distributor config");
        let distributor = berth_distributor::Distributor::build(&config).expect("distributor starts").spawn();
        InProcessDistributor { distributor, edge_token, _admin_tokens: admin_tokens }
    }
}

/// A listener on a port the OS picks, for a server process that must restart on the same
/// address: the test keeps it and hands it to each incarnation.
pub fn listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
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

/// Starts an edge binary with the edge token in its environment (the child's only).
pub fn start_edge(config: &Path, log: &Path) -> EdgeProcess {
    EdgeProcess::start_with_env(config, log, &[("BERTH_EDGE_TOKEN", EDGE_TOKEN)])
}

/// Runs `berthctl` against a distributor; returns (exit code, stdout + stderr).
pub fn berthctl(distributor: &str, args: &[&str]) -> (i32, String) {
    berthctl_with(distributor, args, &[])
}

/// The same with extra environment variables (e.g. `BERTH_CA_FILE`).
pub fn berthctl_with(distributor: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(binary("berthctl"))
        .args(["--server", distributor, "--token", ADMIN_TOKEN])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("berthctl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}
