//! The fleet page in a real browser: headless Chromium (driven over WebDriver) logs in with the
//! admin token, sees both edges of a real fleet with the hit ratios their own counters give,
//! sees a value change in place as pulls go on, and a prefetch job reach 100 %. A screenshot is
//! written to target/test-artifacts/fleet-page.png.

use std::path::Path;
use std::time::Duration;

use berth_tests::browser::Browser;
use berth_tests::client;
use berth_tests::edge::EdgeProcess;
use berth_tests::fleet::ADMIN_TOKEN;
use berth_tests::registry::random_bytes;
use http::Method;
use serde_json::json;

use super::Fleet;

/// The hit ratio the page must show for an edge, from the edge's own `/metrics`: blob and
/// manifest requests served without a fetch of their own (hit, coalesced, revalidated).
async fn hit_ratio(edge: &EdgeProcess) -> Option<f64> {
    let text =
        String::from_utf8_lossy(client::get(&format!("http://{}/metrics", edge.admin)).await.bytes()).into_owned();
    let (mut hits, mut all) = (0.0, 0.0);
    for line in text.lines().filter(|l| l.starts_with("berth_edge_requests_total{")) {
        let label =
            |name: &str| line.split(&format!("{name}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
        let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        if matches!(label("kind"), "blob" | "manifest") {
            all += n;
            if matches!(label("outcome"), "hit" | "coalesced" | "revalidated") {
                hits += n;
            }
        }
    }
    (all > 0.0).then(|| hits / all)
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{:.1} %", v * 100.0))
}

fn cell(edge: &str, field: &str) -> String {
    format!(r#"tr[data-edge="{edge}"] [data-f="{field}"]"#)
}

/// Waits until the page shows `want` in the element matching `css`.
async fn shows(browser: &Browser, css: &str, want: &str) {
    let mut seen = None;
    for _ in 0..300 {
        seen = browser.text(css).await;
        if seen.as_deref() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page shows {seen:?} at {css}, not {want:?}");
}

/// Waits until the browser is at `want` (a click's navigation completes on its own time).
async fn at(browser: &Browser, want: &str, what: &str) {
    let mut seen = String::new();
    for _ in 0..300 {
        seen = browser.current_url().await;
        if seen == want && browser.script("return document.readyState", json!([])).await == "complete" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: the browser is at {seen}, not {want}");
}

fn artefact() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target/test-artifacts/fleet-page.png")
}

async fn the_fleet_page_shows_both_edges_their_hit_ratios_live_and_a_prefetch_reaching_100_percent() {
    let f = Fleet::start();
    f.push("demo/app", "v1", &[random_bytes(300_000), random_bytes(200_000)]).await;
    f.push("demo/big", "v1", &[random_bytes(2_000_000), random_bytes(1_000_000), random_bytes(500_000)]).await;
    f.pull(&f.a, "demo/app:v1");
    f.pull(&f.a, "demo/app:v1");
    f.pull(&f.b, "demo/app:v1");
    let base = f.distributor.url();

    // The data behind the page wants the admin token, or a session.
    assert_eq!(client::get(&format!("{base}/api/v1/fleet")).await.status, 401);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let data = client::request(Method::GET, &format!("{base}/api/v1/fleet"), &[("authorization", &auth)]).await;
    assert_eq!(data.status, 200);
    assert!(data.json()["regions"]["region-a"]["edges"]["edge-a"].is_object(), "{}", data.json());

    let work = tempfile::tempdir().unwrap();
    let browser = Browser::start(work.path()).await;
    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.current_url().await, format!("{base}/login"), "no session: the login form");
    browser.type_into("#token", "not-the-token").await;
    browser.click("button[type=submit]").await;
    shows(&browser, ".error", "That is not an admin token.").await;
    browser.type_into("#token", ADMIN_TOKEN).await;
    browser.click("button[type=submit]").await;
    at(&browser, &format!("{base}/"), "logged in: the fleet page").await;

    let edges = browser
        .script("return [...document.querySelectorAll('tr[data-edge]')].map(e => e.dataset.edge)", json!([]))
        .await;
    assert_eq!(edges, json!(["edge-a", "edge-b"]));
    for edge in ["edge-a", "edge-b"] {
        assert_eq!(browser.text(&cell(edge, "/state")).await.as_deref(), Some("ready"), "{edge}");
    }
    let a = hit_ratio(&f.a).await;
    assert!(a.is_some_and(|r| r > 0.0), "edge-a served its second pull from its cache: {a:?}");
    shows(&browser, &cell("edge-a", "/window_5m/hit_ratio"), &pct(a)).await;
    shows(&browser, &cell("edge-b", "/window_5m/hit_ratio"), &pct(hit_ratio(&f.b).await)).await;
    let bar = r#"section[data-region="region-a"] rect[data-bar="/hit_ratio_chart/11"]"#;
    let height = browser
        .script("return Number(document.querySelector(arguments[0]).getAttribute('height'))", json!([bar]))
        .await;
    assert!(height.as_f64().is_some_and(|h| h > 0.0), "the chart's last 5 minutes show region-a's hits: {height}");
    let top = r#"section[data-region="region-a"] ol.top"#;
    for _ in 0..300 {
        if browser.text(top).await.is_some_and(|t| t.contains("registry.test/demo/app")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(browser.text(top).await.unwrap_or_default().contains("registry.test/demo/app"), "region-a's most pulled");

    // More pulls: the value changes in place (the page is not loaded again).
    browser.script("window.berthMarker = 42; return null", json!([])).await;
    f.pull(&f.a, "demo/app:v1");
    let after = hit_ratio(&f.a).await;
    assert_ne!(pct(after), pct(a), "a third pull changes the ratio");
    shows(&browser, &cell("edge-a", "/window_5m/hit_ratio"), &pct(after)).await;
    assert_eq!(browser.script("return window.berthMarker", json!([])).await, json!(42), "updated in place");

    // A prefetch job ordered now appears and reaches 100 %.
    let (code, out) = f.ctl(&["prefetch", "registry.test/demo/big:v1", "--region", "region-a"]);
    assert_eq!(code, 0, "{out}");
    shows(&browser, r#"tr[data-job] [data-f="/progress"][data-fmt="pct"]"#, "100.0 %").await;
    shows(&browser, r#"tr[data-job] span.state"#, "done").await;
    browser.screenshot(&artefact()).await;

    // Logging out ends the session.
    browser.click("header form button").await;
    at(&browser, &format!("{base}/login"), "logged out").await;
    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.current_url().await, format!("{base}/login"), "the session is gone");
}

on_both_stores!(the_fleet_page_shows_both_edges_their_hit_ratios_live_and_a_prefetch_reaching_100_percent);
