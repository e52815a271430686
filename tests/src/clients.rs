//! Real pull clients from Debian, run the way users run them but confined to a test's folder:
//! podman (registries.conf mirror), containerd with `ctr` (hosts.toml mirrors) and dockerd
//! (`registry-mirrors`). Every client gets `HTTPS_PROXY`/`HTTP_PROXY` pointing at a refusing
//! local port: Go never proxies loopback, so the edge and origin on 127.0.0.1 are reached
//! directly, while a fallback to Docker Hub fails at once instead of reaching the internet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::registry::DockerRegistry;

/// The longest one client command may run; it is killed (with its process group) after that.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// What a finished command left: its exit status and its stdout and stderr together.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub output: String,
}

/// Runs `cmd` in its own process group for at most [`COMMAND_LIMIT`]; panics if it runs longer.
pub fn run(cmd: &mut Command) -> Ran {
    run_within(cmd, COMMAND_LIMIT)
}

/// Runs `cmd` in its own process group for at most `limit`; past that, kills the whole group
/// (so no grandchild keeps its output open) and panics with what it printed.
pub fn run_within(cmd: &mut Command, limit: Duration) -> Ran {
    let (child, what) = spawn_group(cmd);
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: signals the process group this function started, whose leader it has not
            // seen exit.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let out = rx.recv_timeout(Duration::from_secs(10)).ok().and_then(Result::ok);
            let text = out.map(|o| text_of(&o.stdout, &o.stderr)).unwrap_or_default();
            panic!("{what} ran past {limit:?} and was killed:\n{text}");
        }
    };
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    Ran { status: out.status, output: text_of(&out.stdout, &out.stderr) }
}

/// Runs `cmd` (see [`run`]) and panics with its output unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let ran = run(cmd);
    assert!(ran.status.success(), "{what} failed ({}):\n{}", ran.status, ran.output);
    ran.output
}

/// Spawns `cmd` in a process group of its own, output piped; returns it and how it was called.
fn spawn_group(cmd: &mut Command) -> (Child, String) {
    use std::os::unix::process::CommandExt;
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    (child, what)
}

fn text_of(stdout: &[u8], stderr: &[u8]) -> String {
    format!("{}{}", String::from_utf8_lossy(stdout), String::from_utf8_lossy(stderr))
}

/// Points a Go client's proxy settings at `proxy` (both spellings, no exceptions inherited).
fn no_internet(cmd: &mut Command, proxy: SocketAddr) -> &mut Command {
    let url = format!("http://{proxy}");
    for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
        cmd.env(name, &url);
    }
    cmd.env_remove("NO_PROXY").env_remove("no_proxy").env_remove("ALL_PROXY").env_remove("all_proxy")
}

/// Starts a daemon with its output copied to `log`, and waits (bounded) for a line containing
/// `ready`; panics with the log if it exits or stays silent.
fn start_daemon(cmd: &mut Command, log: &Path, ready: &'static str) -> Child {
    let (mut child, what) = spawn_group(cmd);
    if crate::tools::follow_output(&mut child, log, move |line| line.contains(ready).then_some(())).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not report `{ready}`:\n{}", std::fs::read_to_string(log).unwrap_or_default());
    }
    child
}

/// Kills a daemon and its process group, reaps it and detaches every mount it left under `dir`.
fn stop_daemon(child: &mut Child, dir: &Path) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: signals the group of a child that has not been reaped, so the id is still ours.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    }
    let _ = child.wait();
    unmount_under(dir);
}

/// Detaches every mount point under `dir`, deepest first (dockerd bind-mounts its data root onto
/// itself, and a killed daemon leaves that behind).
pub fn unmount_under(dir: &Path) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        let c = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()).expect("mount path");
        // SAFETY: a plain syscall on a NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// podman with its own registries.conf, storage.conf and containers.conf: `docker.io` mirrored
/// by the edge (insecure, so plain HTTP). Nothing keeps running between pulls.
pub struct Podman {
    dir: PathBuf,
    proxy: SocketAddr,
}

impl Podman {
    pub fn new(dir: &Path, edge: SocketAddr, proxy: SocketAddr) -> Podman {
        Self::with_mirror(dir, "docker.io", edge, true, proxy)
    }

    /// `registry` mirrored by the edge at `edge`, over HTTPS unless `insecure`.
    pub fn with_mirror(dir: &Path, registry: &str, edge: SocketAddr, insecure: bool, proxy: SocketAddr) -> Podman {
        std::fs::create_dir_all(dir).expect("podman dir");
        let d = dir.display();
        let files = [
            (
                "registries.conf",
                format!("unqualified-search-registries = []\n\n[[registry]]\nlocation = \"{registry}\"\n\n[[registry.mirror]]\nlocation = \"{edge}\"\ninsecure = {insecure}\n"),
            ),
            ("storage.conf", format!("[storage]\ndriver = \"vfs\"\nrunroot = \"{d}/run\"\ngraphroot = \"{d}/root\"\n")),
            (
                "containers.conf",
                format!("[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\nimage_copy_tmp_dir = \"{d}/tmp\"\nvolume_path = \"{d}/volumes\"\n\n[network]\nnetwork_config_dir = \"{d}/networks\"\n"),
            ),
        ];
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("podman config");
        }
        Podman { dir: dir.to_owned(), proxy }
    }

    /// `podman pull image` into a fresh storage root named `state` (a client that has nothing).
    pub fn pull(&self, image: &str, state: &str) -> String {
        run_ok(&mut self.command(image, state, &[]))
    }

    /// `podman login` to `registry`, storing the credentials in `authfile`.
    pub fn login(&self, registry: &str, user: &str, password: &str, authfile: &Path, cert_dir: &str) -> Ran {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_REGISTRIES_CONF", self.dir.join("registries.conf"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .args(["login", "--cert-dir", cert_dir, "--authfile"])
            .arg(authfile)
            .args(["-u", user, "-p", password, registry]);
        run(no_internet(&mut cmd, self.proxy))
    }

    /// Mounts a pulled image's root filesystem (from storage `state`) and runs `f` with its path;
    /// unmounts after.
    pub fn with_image_root<T>(&self, image: &str, state: &str, f: impl FnOnce(&Path) -> T) -> T {
        let root = self.dir.join(state);
        let podman = |args: &[&str]| {
            let mut cmd = Command::new("podman");
            cmd.env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
                .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
                .arg("--root")
                .arg(root.join("root"))
                .arg("--runroot")
                .arg(root.join("run"))
                .args(["--storage-driver", "vfs"])
                .args(args);
            run_ok(&mut cmd)
        };
        let mounted = podman(&["image", "mount", image]);
        let path = PathBuf::from(mounted.trim().lines().last().unwrap_or_default());
        let result = f(&path);
        podman(&["image", "unmount", image]);
        result
    }

    /// `podman pull` with extra flags (`--cert-dir`, `--creds`); the run, failed or not.
    pub fn pull_with(&self, image: &str, state: &str, flags: &[&str]) -> Ran {
        run(&mut self.command(image, state, flags))
    }

    fn command(&self, image: &str, state: &str, flags: &[&str]) -> Command {
        let root = self.dir.join(state);
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_REGISTRIES_CONF", self.dir.join("registries.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(root.join("root"))
            .arg("--runroot")
            .arg(root.join("run"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("pull")
            .args(flags)
            .arg(image);
        no_internet(&mut cmd, self.proxy);
        cmd
    }
}

/// A containerd of the test's own (socket, root and state in its folder; CRI off) with
/// `content_sharing_policy = "isolated"`, so a fresh namespace is a client that has nothing.
/// Killed when dropped.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    proxy: SocketAddr,
    child: Child,
}

impl Containerd {
    pub fn start(dir: &Path, proxy: SocketAddr) -> Containerd {
        std::fs::create_dir_all(dir).expect("containerd dir");
        let d = dir.display();
        let disabled = [
            "grpc.v1.cri",
            "internal.v1.opt",
            "snapshotter.v1.aufs",
            "snapshotter.v1.btrfs",
            "snapshotter.v1.devmapper",
            "snapshotter.v1.zfs",
        ]
        .map(|p| format!("\"io.containerd.{p}\""))
        .join(", ");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!("version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [{disabled}]\n\n[grpc]\n  address = \"{d}/containerd.sock\"\n\n[ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\n[debug]\n  address = \"\"\n\n[metrics]\n  address = \"\"\n\n[plugins.\"io.containerd.metadata.v1.bolt\"]\n  content_sharing_policy = \"isolated\"\n"),
        )
        .expect("containerd config");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config);
        let child =
            start_daemon(no_internet(&mut cmd, proxy), &dir.join("containerd.log"), "containerd successfully booted");
        Containerd { dir: dir.to_owned(), socket: dir.join("containerd.sock"), proxy, child }
    }

    /// Writes `<hosts>/<registry>/hosts.toml`: `registry` (served by `server`) mirrored by the edge.
    pub fn mirror(hosts: &Path, registry: &str, server: &str, edge: SocketAddr) {
        let dir = hosts.join(registry);
        std::fs::create_dir_all(&dir).expect("hosts dir");
        let text =
            format!("server = \"{server}\"\n\n[host.\"http://{edge}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
        std::fs::write(dir.join("hosts.toml"), text).expect("hosts.toml");
    }

    /// Writes `<hosts>/<registry>/hosts.toml`: `registry` mirrored by the edge over HTTPS,
    /// trusting the CA in `ca`.
    pub fn mirror_tls(hosts: &Path, registry: &str, server: &str, edge: SocketAddr, ca: &Path) {
        let dir = hosts.join(registry);
        std::fs::create_dir_all(&dir).expect("hosts dir");
        let text = format!(
            "server = \"{server}\"\n\n[host.\"https://{edge}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
            ca.display()
        );
        std::fs::write(dir.join("hosts.toml"), text).expect("hosts.toml");
    }

    /// `ctr images pull --hosts-dir hosts image` (fetched in `ctr`, unpacked by containerd) in
    /// the namespace `namespace`.
    pub fn pull(&self, hosts: &Path, image: &str, namespace: &str) -> String {
        run_ok(&mut self.command(hosts, image, namespace, None))
    }

    /// The same with `--user user:password`; the run, failed or not.
    pub fn pull_as(&self, hosts: &Path, image: &str, namespace: &str, user: &str) -> Ran {
        run(&mut self.command(hosts, image, namespace, Some(user)))
    }

    fn command(&self, hosts: &Path, image: &str, namespace: &str, user: Option<&str>) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket).args(["--namespace", namespace, "images", "pull", "--hosts-dir"]);
        cmd.arg(hosts);
        if let Some(user) = user {
            cmd.args(["--user", user]);
        }
        cmd.arg(image);
        no_internet(&mut cmd, self.proxy);
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        stop_daemon(&mut self.child, &self.dir);
    }
}

/// A dockerd with `registry-mirrors` = the edge, its data root and sockets in its folder, using
/// the test's containerd in its own namespace. Killed (and its data root unmounted) when dropped.
pub struct Dockerd {
    dir: PathBuf,
    socket: PathBuf,
    child: Child,
}

impl Dockerd {
    pub fn start(dir: &Path, containerd: &Containerd, namespace: &str, edge: SocketAddr, proxy: SocketAddr) -> Dockerd {
        std::fs::create_dir_all(dir.join("data")).expect("dockerd dir");
        let daemon_json = dir.join("daemon.json");
        let json = serde_json::json!({
            "registry-mirrors": [format!("http://{edge}")],
            "deprecated-key-path": dir.join("key.json"),
        });
        std::fs::write(&daemon_json, json.to_string()).expect("daemon.json");
        let socket = dir.join("docker.sock");
        let mut cmd = Command::new("dockerd");
        cmd.arg("--config-file").arg(&daemon_json).arg("--containerd").arg(&containerd.socket);
        cmd.args(["--containerd-namespace", namespace, "--storage-driver", "vfs"]);
        cmd.args(["--iptables=false", "--ip-masq=false", "--bridge=none"]);
        cmd.arg("--data-root").arg(dir.join("data")).arg("--exec-root").arg(dir.join("exec"));
        cmd.arg("-H").arg(format!("unix://{}", socket.display())).arg("--pidfile").arg(dir.join("docker.pid"));
        let child = start_daemon(no_internet(&mut cmd, proxy), &dir.join("dockerd.log"), "API listen on");
        Dockerd { dir: dir.to_owned(), socket, child }
    }

    /// `docker pull image` (Docker Hub references only: that is what Docker mirrors).
    pub fn pull(&self, image: &str) -> String {
        run_ok(&mut self.command(&["pull", image]))
    }

    /// The docker CLI against this daemon (its own config folder, so logins stay here).
    pub fn docker(&self, args: &[&str]) -> Ran {
        run(&mut self.command(args))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_CONFIG", self.dir.join("cli")).arg("-H").arg(format!("unix://{}", self.socket.display()));
        cmd.args(args);
        cmd
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        stop_daemon(&mut self.child, &self.dir);
    }
}

impl DockerRegistry {
    /// Access-log lines (not the registry's own `response completed` lines, which repeat them)
    /// whose request line contains `request` and whose user agent contains `agent`.
    pub fn access_count(&self, request: &str, agent: &str) -> usize {
        self.access_log()
            .lines()
            .filter(|l| {
                let quoted: Vec<&str> = l.split('"').collect();
                let agent_field = quoted.len().checked_sub(2).map_or("", |i| quoted[i]);
                quoted.get(1).is_some_and(|r| r.contains(request)) && agent_field.contains(agent)
            })
            .count()
    }

    /// The access-log lines so far (one per request), for failure messages.
    pub fn access_log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|l| l.starts_with("127.0.0.1 - - [")).map(|l| format!("{l}\n")).collect()
    }

    /// Waits until the access log holds every request answered so far: sends one request of its
    /// own and waits (bounded) for its line, which the registry logs after the earlier ones.
    pub async fn sync_log(&self) {
        let marker = format!("/v2/log-sync-{}/tags/list", hex::encode(crate::registry::random_bytes(8)));
        crate::client::get(&format!("{}{marker}", self.url())).await;
        crate::eventually("the registry logged its requests", Duration::from_secs(10), || {
            self.access_count(&marker, "") == 1
        })
        .await;
    }
}
