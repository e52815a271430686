//! Starting the origin and the caches under test as real processes on 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procstat;

/// A running server process (and its children); killed when dropped.
pub struct Peer {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub child: Child,
    pub dir: PathBuf,
}

impl Peer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_seconds(&self) -> f64 {
        procstat::cpu_seconds(self.pid())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The parent first: a master (nginx) that outlives a killed worker starts another one,
        // which would be left running.
        for pid in procstat::tree(self.pid()) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let _ = self.child.wait();
    }
}

/// A port the OS considers free now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(name: &'static str, dir: &Path, addr: SocketAddr, command: &mut Command) -> Result<Peer> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = command
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Peer { name, addr, child, dir: dir.to_owned() })
}

/// Waits until `GET /v2/` answers 200.
pub async fn wait_ready(peer: &mut Peer) -> Result<()> {
    for _ in 0..500 {
        if let Some(status) = peer.child.try_wait()? {
            let log = std::fs::read_to_string(peer.dir.join(format!("{}.log", peer.name))).unwrap_or_default();
            bail!("{} exited with {status}: {log}", peer.name);
        }
        if let Ok(mut conn) = crate::load::Conn::connect(peer.addr).await {
            // 401: the edge has a protected upstream and challenges `/v2/` (it answers: ready).
            if conn.get("/v2/", None, None).await.is_ok_and(|t| t.status == 200 || t.status == 401) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{} did not become ready", peer.name)
}

/// The origin: Debian's docker-registry, with its access log in `origin.log`.
pub fn origin(dir: &Path) -> Result<Peer> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    std::fs::create_dir_all(dir)?;
    let config = dir.join("origin.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        ),
    )?;
    spawn("origin", dir, addr, Command::new("docker-registry").arg("serve").arg(&config))
}

/// nginx `proxy_cache` with `proxy_cache_lock`, two workers, `sendfile`.
pub fn nginx(dir: &Path, origin: SocketAddr, max_size: u64) -> Result<Peer> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    std::fs::create_dir_all(dir.join("cache"))?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    let d = dir.display();
    let conf = format!(
        r#"user root;
worker_processes 2;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    client_body_temp_path {d}/tmp/body;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    proxy_temp_path {d}/tmp/proxy;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=berth:64m max_size={max_size} inactive=7d use_temp_path=off;
    upstream origin {{ server {origin}; keepalive 64; }}
    server {{
        listen {addr};
        location /v2/ {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache berth;
            proxy_cache_key $uri;
            proxy_cache_valid 200 7d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_lock_age 60s;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
        }}
    }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    spawn("nginx", dir, addr, Command::new("nginx").arg("-p").arg(dir).arg("-c").arg(&path).args(["-g", "daemon off;"]))
}

/// Varnish with streaming (`do_stream`), caching every 200 for 7 days, in `malloc` storage.
pub fn varnish(dir: &Path, origin: SocketAddr, memory: u64) -> Result<Peer> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    std::fs::create_dir_all(dir)?;
    let vcl = format!(
        r#"vcl 4.1;
backend origin {{ .host = "{}"; .port = "{}"; }}
sub vcl_recv {{
    if (req.method != "GET" && req.method != "HEAD") {{ return (pass); }}
    unset req.http.Cookie;
    return (hash);
}}
sub vcl_hash {{ hash_data(req.url); return (lookup); }}
sub vcl_backend_response {{
    if (beresp.status == 200) {{
        set beresp.ttl = 7d;
        set beresp.do_stream = true;
        unset beresp.http.Set-Cookie;
    }}
}}
"#,
        origin.ip(),
        origin.port()
    );
    let path = dir.join("berth.vcl");
    std::fs::write(&path, vcl)?;
    spawn(
        "varnish",
        dir,
        addr,
        Command::new("varnishd")
            .args(["-F", "-j", "none", "-a", &addr.to_string(), "-f"])
            .arg(&path)
            .arg("-n")
            .arg(dir.join("work"))
            .args(["-s", &format!("malloc,{}", memory)]),
    )
}

/// The distribution registry in pull-through (proxy) mode.
pub fn distribution_proxy(dir: &Path, origin: SocketAddr) -> Result<Peer> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    std::fs::create_dir_all(dir)?;
    let config = dir.join("proxy.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\nproxy:\n  remoteurl: http://{origin}\n",
            dir.join("data").display()
        ),
    )?;
    spawn("distribution", dir, addr, Command::new("docker-registry").arg("serve").arg(&config))
}

/// The Berth edge (release binary) with the origin as its default upstream.
pub fn berth(dir: &Path, binary: &Path, origin: SocketAddr, disk_max: u64, memory_max: u64) -> Result<Peer> {
    berth_with(dir, binary, origin, (disk_max, memory_max), ("berth", ""))
}

/// The Berth edge with extra `[cache]` keys (e.g. `eviction = "s3-fifo"`), named `name`.
pub fn berth_with(
    dir: &Path,
    binary: &Path,
    origin: SocketAddr,
    (disk_max, memory_max): (u64, u64),
    (name, cache_extra): (&'static str, &str),
) -> Result<Peer> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let admin = free_port()?;
    std::fs::create_dir_all(dir)?;
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "region = \"bench\"\n[listen]\nhttp = \"{addr}\"\nadmin = \"127.0.0.1:{admin}\"\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\ndisk_max = \"{disk_max}\"\nmemory_max = \"{memory_max}\"\nscrub_rate = \"0\"\n{cache_extra}\n[[upstream]]\nname = \"docker.io\"\nurl = \"http://{origin}\"\ndefault = true\n",
            dir.join("cache").display().to_string()
        ),
    )?;
    spawn(name, dir, addr, Command::new(binary).arg("--config").arg(&config).env("BERTH_LOG", "warn"))
}

/// One Berth edge of a region: `addr` and `admin` chosen by the caller (every edge must know the
/// others' addresses before they start), `peers` the whole region's pull URLs (empty: an
/// independent edge), the region key in `key_file`.
pub fn berth_region(
    dir: &Path,
    binary: &Path,
    origin: SocketAddr,
    (addr, admin): (SocketAddr, u16),
    disk_max: u64,
    (peers, key_file): (&[String], &Path),
) -> Result<Peer> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("edge.toml");
    let cluster = match peers.is_empty() {
        true => String::new(),
        false => format!(
            "[cluster]\nadvertise = \"http://{addr}\"\npeers = {peers:?}\nkey_file = {:?}\n",
            key_file.display().to_string()
        ),
    };
    std::fs::write(
        &config,
        format!(
            "region = \"bench\"\n[listen]\nhttp = \"{addr}\"\nadmin = \"127.0.0.1:{admin}\"\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\ndisk_max = \"{disk_max}\"\nmemory_max = \"64MiB\"\nscrub_rate = \"0\"\n{cluster}[[upstream]]\nname = \"docker.io\"\nurl = \"http://{origin}\"\ndefault = true\n",
            dir.join("cache").display().to_string()
        ),
    )?;
    spawn("berth", dir, addr, Command::new(binary).arg("--config").arg(&config).env("BERTH_LOG", "warn"))
}

/// Origin access-log lines (GET, status 200) since `from_line`, whose path contains `needle`:
/// (requests, bytes).
pub fn origin_gets(origin: &Peer, from_line: usize, needle: &str) -> (usize, u64) {
    let log = std::fs::read_to_string(origin.dir.join("origin.log")).unwrap_or_default();
    let mut requests = 0;
    let mut bytes = 0;
    for line in log.lines().skip(from_line) {
        let Some(request) = line.split('"').nth(1) else { continue };
        if !request.starts_with("GET ") || !request.contains(needle) || line.contains("berth-loadtest-direct") {
            continue;
        }
        let after: Vec<&str> = line.split('"').nth(2).unwrap_or_default().split_whitespace().collect();
        if after.first() == Some(&"200") {
            requests += 1;
            bytes += after.get(1).and_then(|b| b.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    (requests, bytes)
}

/// Bytes of the files under `dir` (a cache's disk use).
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Samples the peak size of a folder on a thread until stopped.
pub struct DiskSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl DiskSampler {
    pub fn start(dir: PathBuf) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(disk_usage(&dir));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak.max(disk_usage(&dir))
        });
        DiskSampler { stop, handle: Some(handle) }
    }

    /// Stops sampling; returns the peak in bytes.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or(0)
    }
}

/// Lines in the origin's access log now (a mark for `origin_gets`).
pub fn origin_mark(origin: &Peer) -> usize {
    std::fs::read_to_string(origin.dir.join("origin.log")).map(|l| l.lines().count()).unwrap_or(0)
}

/// The Berth edge with a plain and a TLS listener (`cert`, `key`), and two upstreams on the
/// same origin: `docker.io` (anonymous, the default) and `private.test` (htpasswd: user `bench`,
/// password `bench-password`, every repository). Returns the peer (its plain address) and the
/// TLS address.
pub fn berth_secure(
    dir: &Path,
    binary: &Path,
    origin: SocketAddr,
    cert: &Path,
    key: &Path,
) -> Result<(Peer, SocketAddr)> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let admin = free_port()?;
    std::fs::create_dir_all(dir)?;
    let htpasswd = dir.join("users.htpasswd");
    std::fs::write(&htpasswd, format!("bench:{}\n", bcrypt::hash("bench-password", 4)?))?;
    let signing = dir.join("signing-key");
    std::fs::write(&signing, "a-benchmark-signing-key-of-more-than-32-bytes")?;
    let config = dir.join("edge.toml");
    let path = |p: &Path| p.display().to_string();
    std::fs::write(
        &config,
        format!(
            "region = \"bench\"\n[listen]\nhttp = \"{addr}\"\nhttps = \"{tls}\"\nadmin = \"127.0.0.1:{admin}\"\n[tls]\ncert = {:?}\nkey = {:?}\n[auth]\nsigning_key_file = {:?}\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\ndisk_max = \"8GiB\"\nmemory_max = \"256MiB\"\nscrub_rate = \"0\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"http://{origin}\"\ndefault = true\n[[upstream]]\nname = \"private.test\"\nurl = \"http://{origin}\"\naccess = \"htpasswd\"\nhtpasswd_file = {:?}\n[upstream.grants]\nbench = [\"**\"]\n",
            path(cert),
            path(key),
            path(&signing),
            path(&dir.join("cache")),
            path(&htpasswd),
        ),
    )?;
    let peer = spawn("berth", dir, addr, Command::new(binary).arg("--config").arg(&config).env("BERTH_LOG", "warn"))?;
    Ok((peer, tls))
}

/// nginx as in [`nginx`], listening with TLS (HTTP/2 and HTTP/1.1 by ALPN) on `cert`, `key`.
pub fn nginx_tls(dir: &Path, origin: SocketAddr, cert: &Path, key: &Path) -> Result<Peer> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    std::fs::create_dir_all(dir.join("cache"))?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    let d = dir.display();
    let (cert, key) = (cert.display(), key.display());
    let conf = format!(
        r#"user root;
worker_processes 2;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    client_body_temp_path {d}/tmp/body;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    proxy_temp_path {d}/tmp/proxy;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=berth:64m max_size=8g inactive=7d use_temp_path=off;
    upstream origin {{ server {origin}; keepalive 64; }}
    server {{
        listen {addr} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location /v2/ {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache berth;
            proxy_cache_key $uri;
            proxy_cache_valid 200 7d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_lock_age 60s;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
        }}
    }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    spawn("nginx", dir, addr, Command::new("nginx").arg("-p").arg(dir).arg("-c").arg(&path).args(["-g", "daemon off;"]))
}
