//! Real tools from Debian used by the end-to-end tests: helpers to run them and read their
//! output.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;

/// Copies a child's stdout and stderr into `log` on background threads, and returns the first
/// value `find` extracts from a line (None if the process ends first).
pub fn follow_output<T: Send + 'static>(
    child: &mut Child,
    log: &Path,
    find: impl Fn(&str) -> Option<T> + Send + Sync + 'static,
) -> Option<T> {
    let file = std::sync::Arc::new(std::sync::Mutex::new(std::fs::File::create(log).expect("log file")));
    let find = std::sync::Arc::new(find);
    let (tx, rx) = mpsc::channel();
    let streams: Vec<Box<dyn std::io::Read + Send>> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for stream in streams {
        let (file, find, tx) = (file.clone(), find.clone(), tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Ok(mut f) = file.lock() {
                    let _ = writeln!(f, "{line}");
                }
                if let Some(v) = find(&line) {
                    let _ = tx.send(v);
                }
            }
        });
    }
    drop(tx);
    rx.recv_timeout(std::time::Duration::from_secs(60)).ok()
}

/// The status of a GET, or None if nothing answered.
pub async fn try_get_status(url: &str) -> Option<u16> {
    use http_body_util::Empty;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = url.parse().ok()?;
    tokio::time::timeout(crate::client::CALL_LIMIT, client.get(uri)).await.ok()?.ok().map(|r| r.status().as_u16())
}

/// Whether a command exists on this machine.
pub fn have(program: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().is_ok_and(|o| o.status.success())
}

/// Runs skopeo with `args`; panics with its output if it fails.
pub fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().expect("skopeo runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "skopeo {args:?} failed:\n{text}");
    text
}

/// A port on 127.0.0.1 that refuses connections for as long as this lives: a socket bound to it
/// that never listens, so no other process can take the port while a test relies on it being
/// closed (unlike binding a listener and dropping it).
pub struct RefusingPort {
    pub addr: std::net::SocketAddr,
    _socket: std::os::fd::OwnedFd,
}

impl RefusingPort {
    pub fn new() -> RefusingPort {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor this function owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(libc::bind(fd, (&sin as *const libc::sockaddr_in).cast(), len), 0, "bind");
            let mut len = len;
            assert_eq!(libc::getsockname(fd, (&mut sin as *mut libc::sockaddr_in).cast(), &mut len), 0);
            let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, u16::from_be(sin.sin_port)));
            RefusingPort { addr, _socket: socket }
        }
    }
}

impl Default for RefusingPort {
    fn default() -> Self {
        Self::new()
    }
}
