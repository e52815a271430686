//! While a starting edge catches up with the distributor's policy log (before it serves), its
//! admin address already answers: `/readyz` 503 "starting", `/healthz` 200. GeoDNS health checks
//! and anycast health checkers see a reason instead of a connection that hangs. The listening
//! socket is the admin listener's own; Pingora takes it over once the catch-up is done.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Answers on the admin socket until dropped.
pub struct Starting {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Starting {
    /// Serves on a duplicate of `admin` (which must be non-blocking).
    pub fn answer(admin: &TcpListener) -> Option<Starting> {
        let listener = admin.try_clone().ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("berth-starting".into())
            .spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => answer_one(stream),
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .ok()?;
        Some(Starting { stop, thread: Some(thread) })
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer_one(mut stream: std::net::TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut head = [0u8; 1024];
    let n = stream.read(&mut head).unwrap_or(0);
    let line = String::from_utf8_lossy(&head[..n]);
    let path = line.split_whitespace().nth(1).unwrap_or_default();
    let (status, body) = match path {
        "/healthz" => ("200 OK", "ok\n"),
        _ => ("503 Service Unavailable", "not ready: starting: catching up with the distributor's policy log\n"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}
