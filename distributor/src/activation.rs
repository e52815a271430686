//! systemd socket activation: a listener handed over by the service manager (or by a test that
//! keeps one bound across restarts), so the address stays bound while the process restarts and
//! connections wait in the backlog instead of being refused.

use std::net::TcpListener;
use std::os::fd::FromRawFd;

/// The first passed file descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// The listener passed as fd 3 when `LISTEN_FDS` is at least 1 and `LISTEN_PID`, if set, names
/// this process. `None` when nothing was passed; an error when what was passed is not a TCP
/// listening socket.
pub fn inherited_listener() -> Result<Option<TcpListener>, std::io::Error> {
    let count = std::env::var("LISTEN_FDS").ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    let for_us = std::env::var("LISTEN_PID").map_or(true, |pid| pid == std::process::id().to_string());
    if count == 0 || !for_us {
        return Ok(None);
    }
    // SAFETY: the protocol hands fd 3 to this process; it is owned from here on, and checked to
    // be a socket by `local_addr` below.
    let listener = unsafe { TcpListener::from_raw_fd(FIRST_FD) };
    match listener.local_addr() {
        Ok(_) => Ok(Some(listener)),
        Err(e) => {
            std::mem::forget(listener); // not ours to close if it is not a socket
            Err(std::io::Error::new(e.kind(), format!("LISTEN_FDS is set but fd 3 is not a TCP socket: {e}")))
        }
    }
}
