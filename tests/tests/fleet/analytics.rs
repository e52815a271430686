//! Pull analytics: edges report the manifests they served, the distributor keeps them per
//! region (across its restarts), `GET /api/v1/analytics/pulls` and `berthctl top` rank them.

use std::time::Duration;

use berth_tests::client;
use berth_tests::fleet::{DistributorProcess, ADMIN_TOKEN};
use berth_tests::registry::random_bytes;
use http::Method;

use super::Fleet;

async fn pulls(f: &Fleet, query: &str) -> serde_json::Value {
    let url = format!("{}/api/v1/analytics/pulls?{query}", f.distributor.url());
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = client::request(Method::GET, &url, &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(r.bytes()));
    r.json()
}

fn counts(list: &serde_json::Value) -> Vec<(String, u64)> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|p| (p["name"].as_str().unwrap_or_default().to_owned(), p["count"].as_u64().unwrap_or(0)))
        .collect()
}

async fn pulls_are_counted_per_region_ranked_and_kept_across_a_distributor_restart() {
    let mut f = Fleet::start();
    f.push("team/web", "v1", &[random_bytes(10_000)]).await;
    f.push("team/db", "v1", &[random_bytes(10_000)]).await;
    let accept = [("accept", "application/vnd.oci.image.manifest.v1+json")];
    let get = |edge: &berth_tests::edge::EdgeProcess, repo: &str| format!("{}/v2/{repo}/manifests/v1", edge.url());
    for _ in 0..3 {
        assert_eq!(client::request(Method::GET, &get(&f.a, "team/web"), &accept).await.status, 200);
    }
    assert_eq!(client::request(Method::GET, &get(&f.a, "team/db"), &accept).await.status, 200);
    assert_eq!(client::request(Method::GET, &get(&f.b, "team/db"), &accept).await.status, 200);
    // A real client's pull counts too (skopeo asks for the manifest by tag once).
    f.pull(&f.b, "team/db:v1");
    // Not a pull: a manifest the origin does not have (404).
    assert_eq!(client::request(Method::GET, &get(&f.a, "team/none"), &accept).await.status, 404);

    let want_a = vec![("registry.test/team/web".to_owned(), 3), ("registry.test/team/db".to_owned(), 1)];
    berth_tests::eventually_async("region-a's pulls reach the distributor", Duration::from_secs(30), || async {
        counts(&pulls(&f, "region=region-a&since=1h").await["repositories"]) == want_a
    })
    .await;
    berth_tests::eventually_async("region-b's pulls reach the distributor", Duration::from_secs(30), || async {
        let b = counts(&pulls(&f, "region=region-b").await["repositories"]);
        // The GET and skopeo's pull (one manifest request or more).
        b.len() == 1 && b[0].0 == "registry.test/team/db" && b[0].1 >= 2
    })
    .await;
    let manifests = counts(&pulls(&f, "region=region-a&limit=1").await["manifests"]);
    assert_eq!(manifests, vec![("registry.test/team/web:v1".to_owned(), 3)], "limit=1: the top one");

    // Every region together, by berthctl.
    let (code, out) = f.ctl(&["top", "--since", "1h"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pulls in every region since"), "{out}");
    let web = out.lines().find(|l| l.ends_with(" registry.test/team/web")).unwrap_or_default();
    assert_eq!(web.split_whitespace().next(), Some("3"), "{out}");
    let (code, out) = f.ctl(&["top", "--region", "region-b"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("team/web"), "region-b never pulled team/web: {out}");

    // Bad parameters are named.
    let url = format!("{}/api/v1/analytics/pulls?since=yesterday", f.distributor.url());
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = client::request(Method::GET, &url, &[("authorization", &auth)]).await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (400, Some("invalid_field")), "since=yesterday");
    let r = client::request(
        Method::GET,
        &format!("{}/api/v1/analytics/pulls?limit=0", f.distributor.url()),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 400);
    let r = client::get(&format!("{}/api/v1/analytics/pulls", f.distributor.url())).await;
    assert_eq!(r.status, 401, "analytics need the admin token");

    // Counts written at shutdown are there after a restart.
    f.distributor.terminate();
    f.distributor = DistributorProcess::start(f.path(), &f.listener, 10_000, &f.path().join("distributor-2.log"));
    assert_eq!(counts(&pulls(&f, "region=region-a").await["repositories"]), want_a);
}

on_both_stores!(pulls_are_counted_per_region_ranked_and_kept_across_a_distributor_restart);
