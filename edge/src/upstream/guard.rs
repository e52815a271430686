//! Where the edge may connect. An upstream's own host is trusted wherever it lives (it is in the
//! config); every other host an upstream sends the edge to — a redirect to blob storage, a token
//! realm — must resolve to public addresses only, unless its network is allowlisted for that
//! upstream (`allow_private_networks`). The check runs on the addresses the connection is made
//! to (the resolver hands back only allowed ones), so a name that resolves differently later
//! (DNS rebinding) cannot get around it.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// A network in CIDR form, e.g. `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a network like 10.0.0.0/8"))?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 =
            prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s:?}: bad prefix length"))?;
        Ok(Network { addr, prefix })
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Loopback, link-local, private, shared (CGNAT), unspecified, multicast and broadcast
/// addresses: none of them is a public registry or blob store.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || (v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64)
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The outbound policy of one upstream.
#[derive(Debug, Clone)]
pub struct Guard {
    /// The upstream's own host (name or IP literal, as in its URL).
    trusted_host: String,
    allow: Vec<Network>,
}

/// A host the edge was sent to that it will not connect to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} is not the upstream's host and resolves only to internal addresses ({addrs}); allow its network in allow_private_networks to reach it")]
pub struct Refused {
    pub host: String,
    pub addrs: String,
}

impl Guard {
    pub fn new(trusted_host: &str, allow: Vec<Network>) -> Arc<Self> {
        Arc::new(Guard { trusted_host: trusted_host.trim_matches(['[', ']']).to_ascii_lowercase(), allow })
    }

    fn trusts(&self, host: &str) -> bool {
        host.trim_matches(['[', ']']).eq_ignore_ascii_case(&self.trusted_host)
    }

    /// Whether `ip`, reached through `host`, may be connected to.
    pub fn allows(&self, host: &str, ip: IpAddr) -> bool {
        self.trusts(host) || !is_internal(ip) || self.allow.iter().any(|n| n.contains(ip))
    }

    /// Checks a host given as an IP literal (the connector does not resolve those).
    pub fn check_literal(&self, host: &str) -> Result<(), Refused> {
        match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) if !self.allows(host, ip) => Err(Refused { host: host.to_owned(), addrs: ip.to_string() }),
            _ => Ok(()),
        }
    }
}

/// The DNS resolver of an upstream's client: resolves with the system resolver and keeps only
/// the addresses the guard allows.
#[derive(Clone)]
pub struct GuardedResolver {
    pub guard: Arc<Guard>,
}

type Resolving = Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = Arc::clone(&self.guard);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.iter().copied().filter(|a| guard.allows(&host, a.ip())).collect();
            if allowed.is_empty() && !found.is_empty() {
                let addrs = found.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ");
                return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, Refused { host, addrs }));
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn should_call_loopback_link_local_private_and_unspecified_internal() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip(a)), "{a}");
        }
        for a in ["8.8.8.8", "203.0.113.7", "2001:db8::1", "172.32.0.1", "100.128.0.1"] {
            assert!(!is_internal(ip(a)), "{a}");
        }
    }

    #[test]
    fn should_trust_only_the_upstreams_own_host_and_allowlisted_networks() {
        let guard = Guard::new("127.0.0.1", vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(guard.allows("127.0.0.1", ip("127.0.0.1")));
        assert!(!guard.allows("127.0.0.2", ip("127.0.0.2")));
        assert!(!guard.allows("metadata", ip("169.254.169.254")));
        assert!(guard.allows("storage", ip("10.9.8.7")));
        assert!(guard.allows("s3.example.com", ip("203.0.113.9")));
        assert!(guard.check_literal("127.0.0.2").is_err());
        assert!(guard.check_literal("[::1]").is_err());
        assert!(guard.check_literal("s3.example.com").is_ok(), "names are checked by the resolver");
    }

    #[test]
    fn should_parse_networks_and_refuse_bad_ones() {
        let n: Network = "192.0.2.0/24".parse().unwrap();
        assert!(n.contains(ip("192.0.2.200")) && !n.contains(ip("192.0.3.1")));
        assert!("fd00::/8".parse::<Network>().unwrap().contains(ip("fd12::1")));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("10.0.0.0".parse::<Network>().is_err());
        assert!("ten/8".parse::<Network>().is_err());
    }
}
