//! Browser sessions for the fleet page: a login form takes an admin token and sets a session
//! cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over TLS) valid for [`SESSION_TTL`]. A
//! session reads the page and its data (`GET /` and `GET /api/v1/fleet`) and nothing else:
//! every endpoint that changes something still wants the bearer token.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::HeaderMap;
use parking_lot::Mutex;

pub const COOKIE: &str = "berth_session";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest goes first beyond this.
const MAX_SESSIONS: usize = 10_000;

/// Session ids and when each expires (Unix ms).
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, u64>>,
}

impl Sessions {
    /// A new session; returns its id.
    pub fn open(&self, now_ms: u64) -> String {
        use rand::Rng;
        let id: String = (0..32).map(|_| format!("{:02x}", rand::thread_rng().gen::<u8>())).collect();
        let mut live = self.live.lock();
        live.retain(|_, expires| *expires > now_ms);
        if live.len() >= MAX_SESSIONS {
            if let Some(oldest) = live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                live.remove(&oldest);
            }
        }
        live.insert(id.clone(), now_ms + SESSION_TTL.as_millis() as u64);
        id
    }

    /// Whether the request's cookie names a live session.
    pub fn valid(&self, headers: &HeaderMap, now_ms: u64) -> bool {
        let Some(id) = cookie(headers) else { return false };
        self.live.lock().get(id).is_some_and(|expires| *expires > now_ms)
    }

    /// Ends the request's session, if it has one.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            self.live.lock().remove(id);
        }
    }
}

/// The session id in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The `Set-Cookie` value for a session (an empty id with `Max-Age=0` ends it).
pub fn set_cookie(id: &str, secure: bool) -> String {
    let age = if id.is_empty() { 0 } else { SESSION_TTL.as_secs() };
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_accept_a_live_session_only() {
        let s = Sessions::default();
        let id = s.open(1_000);
        let mut h = HeaderMap::new();
        h.insert("cookie", format!("other=1; {COOKIE}={id}").parse().unwrap());
        assert!(s.valid(&h, 2_000));
        assert!(!s.valid(&h, 1_000 + SESSION_TTL.as_millis() as u64), "expired");
        let mut forged = HeaderMap::new();
        let last = if id.ends_with('0') { '1' } else { '0' };
        forged.insert("cookie", format!("{COOKIE}={}{last}", &id[..id.len() - 1]).parse().unwrap());
        assert!(!s.valid(&forged, 2_000));
        s.close(&h);
        assert!(!s.valid(&h, 2_000), "logged out");
        assert!(set_cookie("x", true).ends_with("HttpOnly; SameSite=Strict; Secure"));
    }
}
