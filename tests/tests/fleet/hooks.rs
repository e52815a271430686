//! A push to the origin warms the regions that pull it: Debian's docker-registry sends its
//! notifications to the distributor's registry webhook, a `[[hooks.rule]]` maps the repository
//! to region-a, and the image is warm on region-a's edge only, before anyone pulls it.

use std::time::Duration;

use berth_tests::client;
use berth_tests::fleet::{edge_config, listener, start_edge, DistributorProcess};
use berth_tests::registry::{oci_layout, random_bytes, DockerRegistry};
use berth_tests::tools::skopeo;

#[tokio::test(flavor = "multi_thread")]
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
        "[auth]\nhook_tokens_file = {:?}\n[[hooks.rule]]\nrepositories = [\"hooked/**\"]\nregistry = \"registry.test\"\nregions = [\"region-a\"]\n",
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
