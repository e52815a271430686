//! A push to the origin warms the regions that pull it: Debian's docker-registry sends its
//! notifications to the distributor's registry webhook, a `[[hooks.rule]]` maps the repository
//! to region-a, and the image is warm on region-a's edge only, before anyone pulls it.

use std::time::Duration;

use berth_tests::client;
use berth_tests::fleet::{edge_config, listener, start_edge, DistributorProcess};
use berth_tests::registry::{oci_layout, random_bytes, DockerRegistry};
use berth_tests::tools::skopeo;

async fn a_push_notified_by_the_registry_is_warm_on_the_matching_regions_edges_only() {
    let work = tempfile::tempdir().unwrap();
    let hook_token = work.path().join("hook-token");
    std::fs::write(&hook_token, "hook-token-for-tests").unwrap();
    let listener = listener();
    let distributor_addr = listener.local_addr().unwrap();
    let notifications = format!(
        "notifications:\n  endpoints:\n    - name: berth\n      url: http://{distributor_addr}/api/v1/hooks/registry\n      headers:\n        Authorization: [\"Bearer hook-token-for-tests\"]\n      timeout: 2s\n      threshold: 5\n      backoff: 200ms\n"
    );
    let registry = DockerRegistry::start_with(&work.path().join("registry"), &notifications);
    let rules = format!(
        "[auth]\nhook_tokens_file = {:?}\n[[hooks.rule]]\nrepositories = [\"hooked/**\"]\nregistry = \"registry.test\"\nregions = [\"region-a\"]\n[[hooks.rule]]\nrepositories = [\"followed/*\"]\nregistry = \"registry.test\"\npulled_within = \"1h\"\n",
        hook_token.display().to_string()
    );
    let distributor =
        DistributorProcess::start_configured(work.path(), &listener, 10_000, &work.path().join("d.log"), None, &rules);
    let a = start_edge(
        &edge_config(work.path(), "edge-a", "region-a", &distributor.url(), &registry.url()),
        &work.path().join("a.log"),
    );
    let b = start_edge(
        &edge_config(work.path(), "edge-b", "region-b", &distributor.url(), &registry.url()),
        &work.path().join("b.log"),
    );

    let layout = work.path().join("layout");
    oci_layout(&layout, "v1", &[random_bytes(200_000)]);
    let dest = format!("docker://{}/hooked/app:v1", registry.addr);
    skopeo(&["copy", "--dest-tls-verify=false", &format!("oci:{}:v1", layout.display()), &dest]);
    let layer = registry.blobs_of("hooked/app", "v1").await.remove(0).1.remove(1);

    let blob = |edge: &berth_tests::edge::EdgeProcess| format!("{}/v2/hooked/app/blobs/{layer}", edge.url());
    let on_disk = work.path().join(format!("edge-a-cache/blobs/sha256/{}/{}", &layer[7..9], &layer[7..]));
    berth_tests::eventually("the pushed image is warm on region-a's edge", Duration::from_secs(30), || {
        on_disk.exists()
    })
    .await;
    let r = client::get(&blob(&a)).await;
    assert_eq!((r.status, r.header("x-berth-cache")), (200, Some("hit")), "warm before anyone pulled it");
    let r = client::get(&blob(&b)).await;
    assert_eq!((r.status, r.header("x-berth-cache")), (200, Some("miss")), "region-b was not targeted");
    let log = std::fs::read_to_string(work.path().join("d.log")).unwrap_or_default();
    assert!(log.contains("push webhook: prefetch ordered"), "{log}");

    // A rule that follows the pulls: v1 was pulled in region-b only, so v2's push warms
    // region-b and not region-a.
    oci_layout(&work.path().join("followed-v1"), "v1", &[random_bytes(50_000)]);
    let push = |version: &str| {
        let layout = work.path().join(format!("followed-{version}"));
        if version != "v1" {
            oci_layout(&layout, version, &[random_bytes(150_000)]);
        }
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:{version}", layout.display()),
            &format!("docker://{}/followed/app:{version}", registry.addr),
        ]);
    };
    push("v1");
    let log = work.path().join("d.log");
    berth_tests::eventually("v1's push is seen, and makes no job", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("no region pulled the repository lately")
    })
    .await;
    let accept = [("accept", "application/vnd.oci.image.manifest.v1+json")];
    let v1 = client::request(http::Method::GET, &format!("{}/v2/followed/app/manifests/v1", b.url()), &accept).await;
    assert_eq!(v1.status, 200);
    let top = format!("{}/api/v1/analytics/pulls?region=region-b", distributor.url());
    let admin = format!("Bearer {}", berth_tests::fleet::ADMIN_TOKEN);
    berth_tests::eventually_async("region-b's pull of followed/app is known", Duration::from_secs(30), || async {
        let r = client::request(http::Method::GET, &top, &[("authorization", &admin)]).await;
        r.json()["repositories"][0]["name"] == "registry.test/followed/app"
    })
    .await;
    push("v2");
    let layer = registry.blobs_of("followed/app", "v2").await.remove(0).1.remove(1);
    let on_disk = |edge: &str| work.path().join(format!("{edge}-cache/blobs/sha256/{}/{}", &layer[7..9], &layer[7..]));
    berth_tests::eventually("v2 is warm on region-b's edge", Duration::from_secs(30), || on_disk("edge-b").exists())
        .await;
    let jobs =
        client::request(http::Method::GET, &format!("{}/api/v1/jobs", distributor.url()), &[("authorization", &admin)])
            .await
            .json();
    let followed: Vec<_> =
        jobs.as_array().unwrap().iter().filter(|j| j["images"][0] == "registry.test/followed/app:v2").collect();
    assert_eq!(followed.len(), 1, "{jobs}");
    assert_eq!(followed[0]["regions"], serde_json::json!(["region-b"]), "only the region that pulled it");
    assert!(!on_disk("edge-a").exists(), "region-a never pulled followed/app");
    let none = jobs.as_array().unwrap().iter().filter(|j| j["images"][0] == "registry.test/followed/app:v1").count();
    assert_eq!(none, 0, "v1's push came before anyone pulled: no job");

    // A notification without the hook token is refused.
    let r = client::send(
        http::Method::POST,
        &format!("{}/api/v1/hooks/registry", distributor.url()),
        &[],
        r#"{"events":[]}"#,
    )
    .await;
    assert_eq!(r.status, 401);
}

on_both_stores!(a_push_notified_by_the_registry_is_warm_on_the_matching_regions_edges_only);
