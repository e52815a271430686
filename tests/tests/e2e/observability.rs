//! The Prometheus rules and the Grafana dashboard in deploy/, checked the way operators use them:
//! `promtool check rules` and `promtool test rules`, then a real Prometheus scraping a real edge
//! and distributor under a short pull workload, and every query of every dashboard panel run
//! through Prometheus's HTTP API: each must return data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_shared::HumanDuration;
use berth_tests::client;
use berth_tests::edge;
use berth_tests::origin::Origin;
use berth_tests::tools::have;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy")
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus running the shipped deploy/prometheus/prometheus.yml with its example targets
/// replaced by `edge` and `distributor`, every second, and the alert rules loaded.
fn prometheus(dir: &Path, edge: &str, distributor: &str) -> Prometheus {
    let shipped = std::fs::read_to_string(deploy().join("prometheus/prometheus.yml")).unwrap();
    let config = shipped
        .replace(r#"["edge-1.eu-west.example:9400", "edge-2.eu-west.example:9400"]"#, &format!("[\"{edge}\"]"))
        .replace(r#"["distributor.example:7000"]"#, &format!("[\"{distributor}\"]"))
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("  - berth-alerts.yml", &format!("  - {}", deploy().join("prometheus/berth-alerts.yml").display()));
    assert!(config.contains(edge) && config.contains(distributor), "the shipped config's targets are where expected");
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    // Prometheus binds its own port: try a few until one is free.
    for attempt in 0..20u16 {
        let port = 40_000 + (std::process::id() as u16 % 10_000) + attempt * 53;
        let log = dir.join(format!("prometheus-{port}.log"));
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join(format!("data-{port}")).display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus runs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::fs::read_to_string(&log).unwrap_or_default().contains("Server is ready to receive web requests") {
                return Prometheus { child, url: format!("http://127.0.0.1:{port}") };
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("prometheus did not start");
}

async fn query(prometheus: &Prometheus, expr: &str) -> serde_json::Value {
    let encoded: String = expr.bytes().map(|b| format!("%{b:02X}")).collect();
    let r = client::get(&format!("{}/api/v1/query?query={encoded}", prometheus.url)).await;
    assert_eq!(r.status, 200, "{expr}: {:?}", r.body);
    r.json()
}

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("docs")
}

/// The `berth_*` names in `text` (backquoted in docs, quoted in sources).
fn metric_names(text: &str, quote: char) -> std::collections::BTreeSet<String> {
    text.split(quote)
        .filter(|w| w.starts_with("berth_") && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn docs_metrics_lists_exactly_the_metrics_the_code_defines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut defined = std::collections::BTreeSet::new();
    for source in ["edge/src/metrics/mod.rs", "distributor/src/metrics.rs"] {
        defined.extend(metric_names(&std::fs::read_to_string(root.join(source)).unwrap(), '"'));
    }
    let documented = metric_names(&std::fs::read_to_string(docs().join("metrics.md")).unwrap(), '`');
    assert!(defined.len() >= 40, "the sources define the metrics: {defined:?}");
    let missing: Vec<_> = defined.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&defined).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "not documented: {missing:?}; documented but not defined: {unknown:?}"
    );
}

#[test]
fn the_alert_rules_check_and_pass_their_promtool_tests() {
    if !have("promtool") {
        return berth_tests::skip("the_alert_rules_check_and_pass_their_promtool_tests", "promtool is not installed");
    }
    for args in [vec!["check", "rules", "berth-alerts.yml"], vec!["test", "rules", "berth-alerts.test.yml"]] {
        let out = Command::new("promtool").args(&args).current_dir(deploy().join("prometheus")).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.contains("SUCCESS"), "promtool {args:?}: {said}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_panel_returns_data_from_a_real_prometheus_scraping_a_real_fleet() {
    if !have("prometheus") {
        return berth_tests::skip("every_dashboard_panel_returns_data", "prometheus is not installed");
    }
    let work = tempfile::tempdir().unwrap();
    let control = berth_tests::fleet::InProcessDistributor::start(work.path(), "");
    let (distributor, edge_token) = (&control.distributor, &control.edge_token);
    let origin = Origin::start().await;
    let url = distributor.url();
    let token = edge_token.to_path_buf();
    // TLS on the edge too, so the certificate-expiry panel and gauge have a certificate.
    let pair = berth_tests::pki::TestCa::new(work.path()).issue(work.path(), "edge");
    let files = berth_shared::tls::TlsFiles::new(&pair.cert, &pair.key);
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.listen.https = "127.0.0.1:0".parse().ok();
        c.tls = Some(files);
        c.distributor = Some(berth_edge::config::DistributorLink {
            url,
            token_file: Some(token),
            report_interval: HumanDuration(Duration::from_millis(500)),
            ..Default::default()
        });
    });
    let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
    origin.put_manifest("team/app", Some("v1"), "application/vnd.oci.image.manifest.v1+json", manifest);
    let blobs: Vec<_> = (0..5).map(|i| origin.put_blob("team/app", vec![i as u8; 100_000])).collect();
    let admin = edge.running().admin_addr.to_string();
    let prometheus = prometheus(work.path(), &admin, &distributor.addr.to_string());
    // A prefetch, so the prefetch panels show a job rather than zeros.
    let order = r#"{"images": ["docker.io/team/app:v1"]}"#;
    let r = client::send(http::Method::POST, &format!("{}/api/v1/prefetch", edge.admin_url()), &[], order).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(r.bytes()));

    // A pull workload while Prometheus scrapes: misses first, then hits, for a few seconds.
    let started = Instant::now();
    let mut round = 0u8;
    while started.elapsed() < Duration::from_secs(6) {
        for d in &blobs {
            client::get(&format!("{}/v2/team/app/blobs/{d}", edge.url())).await.bytes();
        }
        // A new blob each round: misses and fills all along, not only before the first scrape.
        round = round.wrapping_add(1);
        let fresh = origin.put_blob("team/app", vec![round; 50_000 + usize::from(round)]);
        client::get(&format!("{}/v2/team/app/blobs/{fresh}", edge.url())).await.bytes();
        let accept = [("accept", "application/vnd.oci.image.manifest.v1+json")];
        client::request(http::Method::GET, &format!("{}/v2/team/app/manifests/v1", edge.url()), &accept).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    berth_tests::eventually_async("both targets scraped several times", Duration::from_secs(20), || async {
        let r = query(&prometheus, "count(count_over_time(up[30s]) >= 3)").await;
        r["data"]["result"][0]["value"][1] == "2"
    })
    .await;

    // Every metric family the two processes expose is documented, and the certificate's
    // expiry is the one in service.
    let documented = std::fs::read_to_string(docs().join("metrics.md")).unwrap();
    let mut undocumented = Vec::new();
    for target in [format!("http://{}/metrics", edge.running().admin_addr), format!("{}/metrics", distributor.url())] {
        let text = String::from_utf8_lossy(client::get(&target).await.bytes()).into_owned();
        for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()) {
            if !documented.contains(&format!("`{family}`")) {
                undocumented.push(family.to_owned());
            }
        }
    }
    assert!(undocumented.is_empty(), "exposed but not in docs/metrics.md: {undocumented:?}");
    let expiry = edge.metric("berth_edge_tls_cert_expiry_timestamp_seconds").await;
    assert_eq!(
        Some(expiry as i64),
        berth_shared::x509::not_after(&pair.der),
        "the expiry of the certificate in service"
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana/berth-fleet.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 15, "the dashboard has its panels");
    let mut empty = Vec::new();
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$region", ".*").replace("$__rate_interval", "20s");
            let answer = query(&prometheus, &expr).await;
            assert_eq!(answer["status"], "success", "{}: {answer}", panel["title"]);
            // Data means a number: a quantile over empty buckets is NaN, which is no data.
            let numbers = answer["data"]["result"].as_array().map_or(0, |r| {
                r.iter()
                    .filter(|s| s["value"][1].as_str().is_some_and(|v| v.parse::<f64>().is_ok_and(f64::is_finite)))
                    .count()
            });
            if numbers == 0 {
                empty.push(format!("{}: {expr}", panel["title"]));
            }
        }
    }
    assert!(empty.is_empty(), "panels without data:\n{}", empty.join("\n"));
    let rules = client::get(&format!("{}/api/v1/rules", prometheus.url)).await.json();
    let loaded = rules["data"]["groups"][0]["rules"].as_array().map_or(0, Vec::len);
    assert!(loaded >= 8, "the alert rules are loaded: {rules}");
    drop(edge);
}
