//! GeoDNS with a real PowerDNS: the distributor renders the zone from its fleet (`berthctl dns
//! zone`), PowerDNS (bind backend, LUA records) answers each region's clients (by EDNS Client
//! Subnet) with that region's ready edges, and a drained edge's clients move to the next region.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_shared::HumanDuration;
use berth_tests::edge::{self, TestEdge};
use berth_tests::fleet::{berthctl, ADMIN_TOKEN, EDGE_TOKEN};
use berth_tests::origin::Origin;
use berth_tests::tools::have;
use http::Method;

/// PowerDNS Authoritative serving `zone_file` for `berth.example` on 127.0.0.1; killed on drop.
struct PowerDns {
    child: Child,
    port: u16,
}

impl PowerDns {
    fn start(dir: &std::path::Path, zone_file: &std::path::Path) -> PowerDns {
        std::fs::write(
            dir.join("named.conf"),
            format!("zone \"berth.example\" {{ type master; file \"{}\"; }};\n", zone_file.display()),
        )
        .unwrap();
        std::fs::write(dir.join("pdns.conf"), "").unwrap();
        // PowerDNS binds its own port: try a few until one is free.
        for attempt in 0..20 {
            let port = 20_000 + (std::process::id() as u16 % 20_000) + attempt * 97;
            let log = dir.join(format!("pdns-{port}.log"));
            let mut child = Command::new("pdns_server")
                .arg(format!("--config-dir={}", dir.display()))
                .args(["--daemon=no", "--guardian=no", "--local-address=127.0.0.1", "--launch=bind"])
                .arg(format!("--socket-dir={}", dir.display()))
                .arg(format!("--local-port={port}"))
                .arg(format!("--bind-config={}", dir.join("named.conf").display()))
                .args(["--enable-lua-records=yes", "--lua-health-checks-interval=1", "--edns-subnet-processing=yes"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("pdns_server runs");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("ready to distribute questions") {
                    return PowerDns { child, port };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("pdns_server did not start");
    }

    /// The A records for the pull name, asked as a client in `subnet` (EDNS Client Subnet).
    fn resolve(&self, subnet: &str) -> Vec<IpAddr> {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "pull.berth.example",
                "A",
                "+short",
                "+tries=1",
                "+time=2",
            ])
            .arg(format!("+subnet={subnet}"))
            .output()
            .expect("dig runs");
        let mut found: Vec<IpAddr> =
            String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
        found.sort();
        found
    }
}

impl Drop for PowerDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An edge of `region` whose admin listener (and advertised address) is `ip`:`port`.
fn region_edge(
    origin: &Origin,
    distributor: &str,
    token: &std::path::Path,
    region: &str,
    ip: &str,
    port: u16,
) -> Option<TestEdge> {
    let (url, token) = (distributor.to_owned(), token.to_owned());
    let (region, ip) = (region.to_owned(), ip.parse::<IpAddr>().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut config = edge::test_config(&dir.path().join("cache"), &[("docker.io", &origin.url())], "");
    config.region = region.clone();
    config.node_id = Some(format!("{region}-1"));
    config.listen.admin = SocketAddr::new(ip, port);
    config.server.drain_period = HumanDuration(Duration::from_millis(100));
    config.distributor = Some(berth_edge::config::DistributorLink {
        url,
        token_file: Some(token),
        report_interval: HumanDuration(Duration::from_millis(100)),
        advertise: Some(ip),
        ..Default::default()
    });
    // The port was free a moment ago; if another process took it, the caller tries another.
    berth_edge::EdgeServer::build(config).ok().map(|server| TestEdge { edge: Some(server.spawn()), dir })
}

async fn powerdns_answers_each_region_with_its_ready_edges_and_moves_a_drained_region_to_the_next() {
    if let Some(missing) = ["pdns_server", "dig"].iter().find(|t| !have(t)) {
        return berth_tests::skip(
            "powerdns_answers_each_region",
            &format!("{missing} is not installed (scripts/test installs it)"),
        );
    }
    let work = tempfile::tempdir().unwrap();
    let (admin_tokens, edge_tokens) = (berth_tests::secret_file(ADMIN_TOKEN), berth_tests::secret_file(EDGE_TOKEN));
    let origin = Origin::start().await;
    // Both edges' admin listeners share one port on two loopback addresses: PowerDNS checks
    // `/readyz` at the same URL on every address.
    let mut edges = None;
    for attempt in 0..10u16 {
        let port = 30_000 + (std::process::id() as u16 % 20_000) + attempt * 131;
        let config = berth_distributor::config::parse(&format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n{}[auth]\nadmin_tokens_file = {:?}\nedge_tokens_file = {:?}\n[dns]\nzone = \"berth.example.\"\nttl = 1\nreadyz_port = {port}\n[[dns.nameservers]]\nname = \"ns1\"\naddress = \"192.0.2.53\"\n[[dns.region]]\nname = \"eu\"\nsubnets = [\"198.51.100.0/24\"]\nfallback = [\"us\"]\n[[dns.region]]\nname = \"us\"\nsubnets = [\"203.0.113.0/24\"]\nfallback = [\"eu\"]\n",
            berth_tests::fleet::store_table(&work.path().join(format!("store-{attempt}"))),
            admin_tokens.display().to_string(),
            edge_tokens.display().to_string(),
        ))
        .unwrap();
        let distributor = berth_distributor::Distributor::build(&config).unwrap().spawn();
        let url = distributor.url();
        let eu = region_edge(&origin, &url, &edge_tokens, "eu", "127.0.0.2", port);
        let us = region_edge(&origin, &url, &edge_tokens, "us", "127.0.0.3", port);
        if let (Some(eu), Some(us)) = (eu, us) {
            edges = Some((distributor, eu, us));
            break;
        }
    }
    let (distributor, eu, us) = edges.expect("two loopback addresses with a common free port");
    let url = distributor.url();
    berth_tests::eventually_async("both edges reported their addresses", Duration::from_secs(20), || async {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let edges =
            berth_tests::client::request(Method::GET, &format!("{url}/api/v1/edges"), &[("Authorization", &auth)])
                .await;
        edges.json().as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let (code, zone) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || berthctl(&url, &["dns", "zone"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{zone}");
    assert!(zone.contains("IN LUA A") && zone.contains("'127.0.0.2'") && zone.contains("'127.0.0.3'"), "{zone}");
    let zone_file = work.path().join("berth.example.zone");
    std::fs::write(&zone_file, &zone).unwrap();
    let dns = PowerDns::start(work.path(), &zone_file);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let answers = |subnet: &'static str, want: &'static str| {
        let dns = &dns;
        move || {
            let got = dns.resolve(subnet);
            async move { got == vec![ip(want)] }
        }
    };
    berth_tests::eventually_async(
        "eu clients get the eu edge",
        Duration::from_secs(20),
        answers("198.51.100.7/32", "127.0.0.2"),
    )
    .await;
    berth_tests::eventually_async(
        "us clients get the us edge",
        Duration::from_secs(20),
        answers("203.0.113.9/32", "127.0.0.3"),
    )
    .await;

    // Drain the eu edge: its clients move to the next region.
    let drained = Instant::now();
    let r = berth_tests::client::send(Method::POST, &format!("{}/api/v1/drain", eu.admin_url()), &[], "").await;
    assert_eq!(r.status, 200);
    berth_tests::eventually_async(
        "eu clients move to the us edge",
        Duration::from_secs(20),
        answers("198.51.100.7/32", "127.0.0.3"),
    )
    .await;
    eprintln!(
        "figure: eu clients moved to the us edge {:?} after the drain (check interval 1 s, TTL 1 s)",
        drained.elapsed()
    );
    let r = berth_tests::client::send(Method::POST, &format!("{}/api/v1/undrain", eu.admin_url()), &[], "").await;
    assert_eq!(r.status, 200);
    berth_tests::eventually_async(
        "eu clients come back",
        Duration::from_secs(20),
        answers("198.51.100.7/32", "127.0.0.2"),
    )
    .await;
    drop((eu, us, distributor));
}

on_both_stores!(powerdns_answers_each_region_with_its_ready_edges_and_moves_a_drained_region_to_the_next);
