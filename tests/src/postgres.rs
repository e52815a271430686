//! A real PostgreSQL for tests: `initdb` in a temporary folder and `postgres` on 127.0.0.1 at a
//! port the OS picked — as the `postgres` user when the tests run as root (PostgreSQL refuses to
//! run as root), else as the test's own user — stopped (fast shutdown) and removed when dropped.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Postgres {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// The folder of PostgreSQL's server binaries (Debian's `postgresql` package).
fn bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/test installs postgresql)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("an initdb under /usr/lib/postgresql")
}

/// The user to run PostgreSQL as: the `postgres` user for root, else the test's own.
fn run_as(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    match user {
        Some((uid, gid)) => command.uid(uid).gid(gid),
        None => command,
    }
}

/// The `postgres` user's ids, when running as root.
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let out = Command::new("id").args(["-u", "postgres"]).output().expect("id");
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a postgres user");
    let out = Command::new("id").args(["-g", "postgres"]).output().expect("id");
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a postgres group");
    Some((uid, gid))
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        let user = postgres_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the data folder");
        }
        let data = dir.path().join("data");
        let initdb = run_as(&mut Command::new(bin().join("initdb")), user)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("initdb");
        assert!(initdb.status.success(), "initdb: {}", String::from_utf8_lossy(&initdb.stderr));
        // PostgreSQL binds its own socket: a port the OS just picked, free again.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = run_as(&mut Command::new(bin().join("postgres")), user)
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let pg = Postgres { child, port, _dir: dir };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // The blocking client runs its own runtime: never inside the test's.
        let connects =
            |url: String| std::thread::spawn(move || postgres::Client::connect(&url, postgres::NoTls).is_ok());
        while !connects(pg.url()).join().unwrap_or(false) {
            assert!(std::time::Instant::now() < deadline, "postgres did not accept connections in 30 s");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        pg
    }

    /// The postmaster's process id (its backends are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}
