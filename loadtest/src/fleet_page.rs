//! The fleet page with a large fleet: a real distributor gets two rounds of reports from many
//! simulated edges (regions of 50, each report with request and byte counters and 50 pulled
//! names), then `GET /api/v1/fleet` and `GET /` are timed, and headless Chromium (WebDriver)
//! loads the page: the navigation's own timings say when it was loaded and shown.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use berth_tests::browser::Browser;
use http::Method;
use serde_json::json;

use crate::propagation::{distributor, wait_up, ADMIN, EDGE};
use crate::report::{f1, Table};

const EDGES_PER_REGION: usize = 50;

fn report(i: usize, round: u64) -> serde_json::Value {
    let region = format!("region-{:02}", i / EDGES_PER_REGION);
    let n = 1_000 * (i as u64 + 1) * round;
    let pulls: Vec<_> = (0..50)
        .map(|k| json!({"name": format!("registry.example.com/team-{}/app-{k}", i % 7), "count": 50 - k}))
        .collect();
    json!({
        "id": format!("edge-{i:04}"), "region": region, "version": "bench", "applied_version": 1,
        "requests": {"blob/hit": n * 9, "blob/miss": n, "manifest/revalidated": n},
        "served_bytes": {"memory": n << 20, "disk": n << 21, "upstream": n << 18},
        "upstream_bytes": n << 18, "cache_used_bytes": 40u64 << 30, "cache_max_bytes": 100u64 << 30,
        "readiness": if i.is_multiple_of(97) { "drained by an operator" } else { "ready" },
        "fills_in_flight": i % 4, "uptime_seconds": 86_400 + round * 60,
        "pulls": {"repositories": pulls, "manifests": []},
    })
}

async fn post_reports(addr: SocketAddr, edges: usize, round: u64) -> Result<()> {
    let url = format!("http://{addr}/api/v1/edges/report");
    let auth = format!("Bearer {EDGE}");
    for i in 0..edges {
        let body = report(i, round).to_string();
        let r = berth_tests::client::send(
            Method::POST,
            &url,
            &[("authorization", &auth), ("content-type", "application/json")],
            body,
        )
        .await;
        if r.status != 200 {
            bail!("report {i}: {} {}", r.status, String::from_utf8_lossy(r.bytes()));
        }
    }
    Ok(())
}

/// Median and maximum of `runs` timings of a GET, and the body's size.
async fn time_get(url: &str, runs: usize) -> (Duration, Duration, usize) {
    let auth = format!("Bearer {ADMIN}");
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let r = berth_tests::client::request(Method::GET, url, &[("authorization", &auth)]).await;
        times.push(start.elapsed());
        size = r.bytes().len();
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1], size)
}

pub async fn run(binary: &Path, work: &Path, edges: usize, runs: usize) -> Result<String> {
    let mut peer = distributor(binary, &work.join("distributor"), None)?;
    wait_up(&mut peer).await?;
    let addr = peer.addr;
    post_reports(addr, edges, 1).await?;
    post_reports(addr, edges, 2).await?;

    let mut table = Table::new(
        &format!("Fleet page, {edges} simulated edges in {} regions", edges.div_ceil(EDGES_PER_REGION)),
        &format!("{runs} runs each; the distributor release binary on 127.0.0.1; Chromium {}", chromium_version()),
        &["measure", "median ms", "max ms", "size"],
    );
    for (name, path) in [("GET /api/v1/fleet (JSON)", "/api/v1/fleet"), ("GET / (HTML)", "/")] {
        let (median, max, size) = time_get(&format!("http://{addr}{path}"), runs).await;
        table.row(vec![name.into(), f1(ms(median)), f1(ms(max)), format!("{} KiB", size / 1024)]);
    }

    let browser = Browser::start(work).await;
    browser.goto(&format!("http://{addr}/login")).await;
    browser.type_into("#token", ADMIN).await;
    browser.click("button[type=submit]").await;
    let (mut loaded, mut shown) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        browser.goto(&format!("http://{addr}/")).await;
        let t = browser
            .script(
                "const n = performance.getEntriesByType('navigation')[0]; \
                 const p = performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint'); \
                 return [n.loadEventEnd, p ? p.startTime : null, document.querySelectorAll('tr[data-edge]').length]",
                json!([]),
            )
            .await;
        let rows = t[2].as_u64().unwrap_or(0) as usize;
        if rows != edges {
            bail!("the page shows {rows} edges, not {edges}");
        }
        loaded.push(t[0].as_f64().unwrap_or(f64::NAN));
        shown.push(t[1].as_f64().unwrap_or(f64::NAN));
    }
    for (name, v) in
        [("browser: navigation to load event", &mut loaded), ("browser: first contentful paint", &mut shown)]
    {
        v.sort_by(f64::total_cmp);
        table.row(vec![name.into(), f1(v[v.len() / 2]), f1(v[v.len() - 1]), String::new()]);
    }
    drop(browser);
    drop(peer);
    Ok(table.markdown())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn chromium_version() -> String {
    std::process::Command::new("chromium")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1).unwrap_or("?").to_owned())
        .unwrap_or_else(|_| "?".into())
}
