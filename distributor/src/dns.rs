//! The GeoDNS zone, rendered from the fleet: one name (e.g. `pull.berth.example.`) answered by
//! PowerDNS with a LUA record that picks the client's region by its address (or EDNS Client
//! Subnet) and returns that region's edges whose `/readyz` answers 200 (`ifurlup`), falling back
//! region by region when none is ready. A new edge that reports its address appears in the zone
//! the next time it is rendered (`berthctl dns zone`); nothing is edited by hand.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::store::EdgeRecord;

/// `[dns]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// The zone, e.g. `"berth.example."`. Default: none (no zone is rendered).
    pub zone: Option<String>,
    /// The pull name inside the zone. Default: `"pull"`.
    pub name: String,
    /// TTL of the answers, in seconds: how long a resolver keeps an edge that has turned
    /// unready (keep it, plus PowerDNS's check interval, below the edges' `drain_period`).
    /// Default: `10`.
    pub ttl: u32,
    /// The port of every edge's admin listener, where PowerDNS checks `/readyz`. Default: `9400`.
    pub readyz_port: u16,
    /// The zone's name servers (name, address). Default: none.
    pub nameservers: Vec<NameServer>,
    /// The regions in fallback order: a client in a region gets that region's ready edges, else
    /// those of its `fallback` regions in order, else of every other region. Default: none.
    pub region: Vec<DnsRegion>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            zone: None,
            name: "pull".into(),
            ttl: 10,
            readyz_port: 9400,
            nameservers: Vec::new(),
            region: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameServer {
    pub name: String,
    pub address: IpAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRegion {
    pub name: String,
    /// Client networks of this region (CIDR), matched against the client's address or its EDNS
    /// Client Subnet.
    pub subnets: Vec<String>,
    /// Regions to answer with, in order, when none of this region's edges is ready.
    #[serde(default)]
    pub fallback: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("no [dns] zone is configured")]
    NoZone,
}

/// Problems in `[dns]`, each naming its key.
pub fn validate(dns: &DnsConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let label = |s: &str| {
        !s.is_empty() && s.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    };
    if let Some(zone) = &dns.zone {
        if !zone.ends_with('.') || !label(zone.trim_end_matches('.')) {
            problems.push(format!("dns.zone: {zone:?} is not a zone name like \"berth.example.\""));
        }
    }
    if !label(&dns.name) {
        problems.push(format!("dns.name: {:?} is not a host name", dns.name));
    }
    let names: Vec<&str> = dns.region.iter().map(|r| r.name.as_str()).collect();
    for (i, r) in dns.region.iter().enumerate() {
        for s in &r.subnets {
            if !is_cidr(s) {
                problems.push(format!("dns.region[{i}].subnets: {s:?} is not a network like \"198.51.100.0/24\""));
            }
        }
        for f in &r.fallback {
            if !names.contains(&f.as_str()) {
                problems.push(format!("dns.region[{i}].fallback: {f:?} is not a configured region"));
            }
        }
    }
    problems
}

fn is_cidr(text: &str) -> bool {
    let Some((ip, bits)) = text.split_once('/') else { return false };
    match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
        (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
        (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
        _ => false,
    }
}

/// The zone file (BIND format, for PowerDNS's bind backend with `enable-lua-records=yes`).
pub fn render(dns: &DnsConfig, edges: &[EdgeRecord], serial: u64) -> Result<String, DnsError> {
    let zone = dns.zone.as_deref().ok_or(DnsError::NoZone)?;
    let mut out = format!("$ORIGIN {zone}\n$TTL {}\n", dns.ttl);
    let primary = dns.nameservers.first().map_or_else(|| format!("ns1.{zone}"), |n| fqdn(&n.name, zone));
    let _ = writeln!(out, "@ IN SOA {primary} hostmaster.{zone} {serial} 3600 600 86400 {}", dns.ttl);
    for ns in &dns.nameservers {
        let _ = writeln!(out, "@ IN NS {}", fqdn(&ns.name, zone));
        let kind = if ns.address.is_ipv4() { "A" } else { "AAAA" };
        let _ = writeln!(out, "{} IN {kind} {}", ns.name.trim_end_matches(&format!(".{zone}")), ns.address);
    }
    let url = format!("http://{}.{}:{}/readyz", dns.name, zone.trim_end_matches('.'), dns.readyz_port);
    for (kind, v4) in [("A", true), ("AAAA", false)] {
        let sets = |regions: &[&str]| -> String {
            let lists: Vec<String> = regions
                .iter()
                .map(|r| addresses(edges, r, v4))
                .filter(|a| !a.is_empty())
                .map(|a| format!("{{{}}}", a.iter().map(|ip| format!("'{ip}'")).collect::<Vec<_>>().join(",")))
                .collect();
            format!("{{{}}}", lists.join(","))
        };
        let all: Vec<&str> = dns.region.iter().map(|r| r.name.as_str()).collect();
        if all.iter().all(|r| addresses(edges, r, v4).is_empty()) {
            continue;
        }
        let mut script = String::from(";");
        for r in &dns.region {
            let mut order = vec![r.name.as_str()];
            order.extend(r.fallback.iter().map(String::as_str));
            order.extend(all.iter().filter(|n| !order.contains(n)).copied().collect::<Vec<_>>());
            let nets = r.subnets.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(",");
            let _ = write!(
                script,
                "if netmask({{{nets}}}) then return ifurlup('{url}', {}, {{selector='all'}}) end ",
                sets(&order)
            );
        }
        let _ = write!(script, "return ifurlup('{url}', {}, {{selector='all'}})", sets(&all));
        let _ = writeln!(out, "{} {} IN LUA {kind} \"{script}\"", dns.name, dns.ttl);
    }
    Ok(out)
}

fn fqdn(name: &str, zone: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.{zone}")
    }
}

/// The advertised addresses of a region's edges, of one family, sorted.
fn addresses(edges: &[EdgeRecord], region: &str, v4: bool) -> Vec<IpAddr> {
    let mut found: Vec<IpAddr> = edges
        .iter()
        .filter(|e| e.region == region)
        .filter_map(|e| e.report.address)
        .filter(|a| a.is_ipv4() == v4)
        .collect();
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(id: &str, region: &str, address: &str) -> EdgeRecord {
        let report = berth_shared::protocol::EdgeReport {
            id: id.into(),
            region: region.into(),
            version: "t".into(),
            address: address.parse().ok(),
            ..Default::default()
        };
        EdgeRecord {
            id: id.into(),
            region: region.into(),
            version: "t".into(),
            first_seen_ms: 0,
            last_seen_ms: 0,
            report,
        }
    }

    #[test]
    fn should_render_each_region_with_its_fallbacks() {
        let dns: DnsConfig = toml::from_str(
            "zone = \"berth.example.\"\n[[nameservers]]\nname = \"ns1\"\naddress = \"192.0.2.53\"\n[[region]]\nname = \"eu\"\nsubnets = [\"198.51.100.0/24\"]\nfallback = [\"us\"]\n[[region]]\nname = \"us\"\nsubnets = [\"203.0.113.0/24\"]\n",
        )
        .unwrap();
        assert!(validate(&dns).is_empty());
        let edges = [
            edge("e1", "eu", "192.0.2.11"),
            edge("e2", "eu", "192.0.2.12"),
            edge("u1", "us", "192.0.2.21"),
            edge("x", "us", ""),
        ];
        let zone = render(&dns, &edges, 7).unwrap();
        assert!(zone.contains("@ IN SOA ns1.berth.example. hostmaster.berth.example. 7 "), "{zone}");
        assert!(zone.contains("ns1 IN A 192.0.2.53"));
        assert!(zone.contains("if netmask({'198.51.100.0/24'}) then return ifurlup('http://pull.berth.example:9400/readyz', {{'192.0.2.11','192.0.2.12'},{'192.0.2.21'}}, {selector='all'}) end"), "{zone}");
        assert!(zone.contains("if netmask({'203.0.113.0/24'}) then return ifurlup('http://pull.berth.example:9400/readyz', {{'192.0.2.21'},{'192.0.2.11','192.0.2.12'}}"), "{zone}");
        assert!(!zone.contains("IN LUA AAAA"), "no IPv6 edges, no AAAA record");
    }

    #[test]
    fn should_name_bad_keys() {
        let dns: DnsConfig = toml::from_str(
            "zone = \"berth.example\"\n[[region]]\nname = \"eu\"\nsubnets = [\"10.0.0.0/33\"]\nfallback = [\"mars\"]\n",
        )
        .unwrap();
        let problems = validate(&dns).join("\n");
        for key in ["dns.zone", "dns.region[0].subnets", "dns.region[0].fallback"] {
            assert!(problems.contains(key), "{key}: {problems}");
        }
    }
}
