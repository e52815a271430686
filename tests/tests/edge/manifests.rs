//! Manifests: by digest (immutable, verified), by tag (TTL, HEAD revalidation, stale-if-error),
//! content negotiation, indexes, size limit.

use berth_shared::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use berth_shared::{Digest, HumanDuration};
use berth_tests::client;
use berth_tests::edge::{self, TestEdge};
use berth_tests::origin::{Fault, Origin};
use http::Method;

const REPO: &str = "lib/web";

fn image_manifest(seed: u8) -> Vec<u8> {
    let d = |n: u8| Digest::of(&[seed, n]);
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":2}}]}}"#,
        d(0),
        d(1)
    )
    .into_bytes()
}

fn edge_with_ttl(origin: &Origin, tag_ttl: u64, stale_if_error: u64) -> TestEdge {
    edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.upstream[0].tag_ttl = HumanDuration::secs(tag_ttl);
        c.upstream[0].stale_if_error = HumanDuration::secs(stale_if_error);
    })
}

async fn get_manifest(edge: &TestEdge, reference: &str, accept: &[&str]) -> client::Response {
    let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("Accept", *a)).collect();
    client::request(Method::GET, &format!("{}/v2/{REPO}/manifests/{reference}", edge.url()), &headers).await
}

#[tokio::test]
async fn a_manifest_by_digest_is_fetched_once_verified_and_cached() {
    let origin = Origin::start().await;
    let body = image_manifest(1);
    let digest = origin.put_manifest(REPO, None, OCI_MANIFEST, body.clone());
    let edge = edge_with_ttl(&origin, 60, 3600);
    for expected in ["miss", "hit", "hit"] {
        let r = get_manifest(&edge, &digest.to_string(), &[OCI_MANIFEST]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.bytes().as_ref(), body.as_slice());
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(r.header("docker-content-digest"), Some(digest.to_string().as_str()));
        assert_eq!(r.header("x-berth-cache"), Some(expected));
    }
    assert_eq!(origin.count("GET", "/v2/lib/web/manifests/"), 1);
}

#[tokio::test]
async fn a_manifest_that_does_not_match_its_digest_is_refused_and_not_cached() {
    let origin = Origin::start().await;
    let digest = Digest::of(&image_manifest(1));
    origin.put_raw(&format!("/v2/{REPO}/manifests/{digest}"), image_manifest(2));
    let edge = edge_with_ttl(&origin, 60, 3600);
    let r = get_manifest(&edge, &digest.to_string(), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(edge.metric("berth_edge_digest_mismatches_total").await, 1.0);
    let r = get_manifest(&edge, &digest.to_string(), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(origin.count("GET", "/v2/lib/web/manifests/"), 2, "nothing was cached");
}

#[tokio::test]
async fn a_tag_within_its_ttl_is_served_without_asking_the_upstream() {
    let origin = Origin::start().await;
    let body = image_manifest(1);
    origin.put_manifest(REPO, Some("v1"), OCI_MANIFEST, body.clone());
    let edge = edge_with_ttl(&origin, 3600, 3600);
    let first = get_manifest(&edge, "v1", &[OCI_MANIFEST]).await;
    assert_eq!(first.bytes().as_ref(), body.as_slice());
    let requests = origin.log().len();
    let second = get_manifest(&edge, "v1", &[OCI_MANIFEST]).await;
    assert_eq!(second.bytes().as_ref(), body.as_slice());
    assert_eq!(second.header("x-berth-cache"), Some("hit"));
    assert_eq!(origin.log().len(), requests, "no upstream request within tag_ttl");
}

#[tokio::test]
async fn a_tag_past_its_ttl_is_revalidated_with_a_head_and_follows_a_retag() {
    let origin = Origin::start().await;
    let v1 = image_manifest(1);
    origin.put_manifest(REPO, Some("latest"), OCI_MANIFEST, v1.clone());
    let edge = edge_with_ttl(&origin, 0, 3600);
    assert_eq!(get_manifest(&edge, "latest", &[OCI_MANIFEST]).await.bytes().as_ref(), v1.as_slice());
    let gets = origin.count("GET", "/v2/lib/web/manifests/");
    let r = get_manifest(&edge, "latest", &[OCI_MANIFEST]).await;
    assert_eq!(r.header("x-berth-cache"), Some("revalidated"));
    assert_eq!(origin.count("GET", "/v2/lib/web/manifests/"), gets, "unchanged: no GET");
    assert_eq!(origin.count("HEAD", "/v2/lib/web/manifests/latest"), 2);

    let v2 = image_manifest(2);
    let d2 = origin.put_manifest(REPO, Some("latest"), OCI_MANIFEST, v2.clone());
    let r = get_manifest(&edge, "latest", &[OCI_MANIFEST]).await;
    assert_eq!(r.bytes().as_ref(), v2.as_slice(), "the retag is seen at revalidation");
    assert_eq!(r.header("docker-content-digest"), Some(d2.to_string().as_str()));
}

#[tokio::test]
async fn a_failing_upstream_gets_the_last_known_tag_served_stale() {
    let origin = Origin::start().await;
    let body = image_manifest(1);
    origin.put_manifest(REPO, Some("v1"), OCI_MANIFEST, body.clone());
    let edge = edge_with_ttl(&origin, 0, 3600);
    get_manifest(&edge, "v1", &[OCI_MANIFEST]).await.bytes();
    origin.fault(&format!("/v2/{REPO}/manifests/v1"), Fault::Status(503));
    let r = get_manifest(&edge, "v1", &[OCI_MANIFEST]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes().as_ref(), body.as_slice());
    assert_eq!(r.header("x-berth-cache"), Some("stale"));
    assert!(r.header("warning").is_some_and(|w| w.starts_with("110")));
    assert_eq!(edge.metric("berth_edge_stale_served_total").await, 1.0);
    assert_eq!(edge.metric("berth_edge_requests_total{kind=\"manifest\",outcome=\"stale\"").await, 1.0);
}

#[tokio::test]
async fn a_stale_tag_past_stale_if_error_is_not_served() {
    let origin = Origin::start().await;
    origin.put_manifest(REPO, Some("v1"), OCI_MANIFEST, image_manifest(1));
    let edge = edge_with_ttl(&origin, 0, 0);
    get_manifest(&edge, "v1", &[OCI_MANIFEST]).await.bytes();
    origin.fault(&format!("/v2/{REPO}/manifests/v1"), Fault::Status(503));
    let r = get_manifest(&edge, "v1", &[OCI_MANIFEST]).await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn a_deleted_tag_is_forgotten() {
    let origin = Origin::start().await;
    origin.put_manifest(REPO, Some("v1"), OCI_MANIFEST, image_manifest(1));
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.upstream[0].tag_ttl = HumanDuration::secs(0);
        c.upstream[0].stale_if_error = HumanDuration::secs(3600);
        // Each request asks the upstream (remembered 404s have their own test).
        c.upstream[0].negative_ttl = HumanDuration::secs(0);
    });
    get_manifest(&edge, "v1", &[OCI_MANIFEST]).await.bytes();
    origin.fault(&format!("/v2/{REPO}/manifests/v1"), Fault::Status(404));
    let r = get_manifest(&edge, "v1", &[OCI_MANIFEST]).await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
    // Forgotten, not kept: a failing upstream now gets no stale answer for the deleted tag.
    origin.fault(&format!("/v2/{REPO}/manifests/v1"), Fault::Status(503));
    let r = get_manifest(&edge, "v1", &[OCI_MANIFEST]).await;
    assert_eq!(r.status, 502, "no stale mapping of a deleted tag: {:?}", r.body);
    assert_eq!(edge.metric("berth_edge_stale_served_total").await, 0.0);
}

#[tokio::test]
async fn the_served_manifest_types_of_every_accept_line_go_upstream_and_no_others() {
    let origin = Origin::start().await;
    origin.put_manifest(REPO, Some("v1"), OCI_MANIFEST, image_manifest(1));
    let edge = edge_with_ttl(&origin, 60, 3600);
    // Separate Accept lines, as skopeo and podman send them, one of a type Berth does not serve.
    let r = get_manifest(&edge, "v1", &[DOCKER_MANIFEST, "text/html", OCI_MANIFEST, OCI_INDEX]).await;
    assert_eq!(r.status, 200);
    let head = origin.log().into_iter().find(|l| l.method == "HEAD").expect("tag HEAD upstream");
    let accept = head.all("Accept").join(",");
    for t in [DOCKER_MANIFEST, OCI_MANIFEST, OCI_INDEX] {
        assert!(accept.contains(t), "{t} not sent upstream: {accept}");
    }
    assert!(!accept.contains("text/html"), "only manifest types Berth serves go upstream: {accept}");
}

#[tokio::test]
async fn a_client_never_gets_a_media_type_it_did_not_accept() {
    let origin = Origin::start().await;
    let digest = origin.put_manifest(REPO, Some("v1"), OCI_MANIFEST, image_manifest(1));
    let edge = edge_with_ttl(&origin, 60, 3600);
    get_manifest(&edge, &digest.to_string(), &[OCI_MANIFEST]).await.bytes();
    let r = get_manifest(&edge, &digest.to_string(), &[DOCKER_MANIFEST]).await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let r = get_manifest(&edge, "v1", &[DOCKER_MANIFEST]).await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let r = get_manifest(&edge, "v1", &[]).await;
    assert_eq!(r.status, 200, "no Accept header: any manifest type");
}

#[tokio::test]
async fn an_image_index_is_cached_as_the_index() {
    let origin = Origin::start().await;
    let platform = origin.put_manifest(REPO, None, OCI_MANIFEST, image_manifest(1));
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{platform}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
    );
    let index_digest = origin.put_manifest(REPO, Some("multi"), OCI_INDEX, index.clone());
    let edge = edge_with_ttl(&origin, 3600, 3600);
    for _ in 0..2 {
        let r = get_manifest(&edge, "multi", &[OCI_INDEX, OCI_MANIFEST]).await;
        assert_eq!(r.header("content-type"), Some(OCI_INDEX));
        assert_eq!(r.bytes().as_ref(), index.as_bytes());
        assert_eq!(r.header("docker-content-digest"), Some(index_digest.to_string().as_str()));
    }
    let r = get_manifest(&edge, &index_digest.to_string(), &[OCI_INDEX]).await;
    assert_eq!(r.header("x-berth-cache"), Some("hit"));
}

#[tokio::test]
async fn head_by_tag_answers_from_the_upstream_head_without_a_body_fetch() {
    let origin = Origin::start().await;
    let body = image_manifest(3);
    let digest = origin.put_manifest(REPO, Some("v3"), OCI_MANIFEST, body.clone());
    let edge = edge_with_ttl(&origin, 60, 3600);
    let h =
        client::request(Method::HEAD, &format!("{}/v2/{REPO}/manifests/v3", edge.url()), &[("Accept", OCI_MANIFEST)])
            .await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("docker-content-digest"), Some(digest.to_string().as_str()));
    assert_eq!(h.header("content-length"), Some(body.len().to_string().as_str()));
    assert_eq!(origin.count("GET", "/v2/"), 0);
}

#[tokio::test]
async fn manifests_over_4_mib_are_refused() {
    let origin = Origin::start().await;
    let mut big = image_manifest(1);
    big.pop();
    big.extend_from_slice(format!(r#","annotations":{{"pad":"{}"}}}}"#, "x".repeat(4 << 20)).as_bytes());
    let digest = origin.put_manifest(REPO, Some("huge"), OCI_MANIFEST, big);
    let edge = edge_with_ttl(&origin, 60, 3600);
    let r = get_manifest(&edge, &digest.to_string(), &[OCI_MANIFEST]).await;
    assert_eq!((r.status, r.error_code().as_str()), (502, "MANIFEST_INVALID"));
    let r = get_manifest(&edge, "huge", &[OCI_MANIFEST]).await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn an_upstream_404_is_remembered_for_negative_ttl_and_an_invalidation_forgets_it() {
    let origin = Origin::start().await;
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.upstream[0].negative_ttl = HumanDuration::secs(3600);
    });
    for _ in 0..3 {
        let r = get_manifest(&edge, "v9", &[OCI_MANIFEST]).await;
        assert_eq!((r.status, r.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
    }
    let asked = origin.count("HEAD", &format!("/v2/{REPO}/manifests/v9"))
        + origin.count("GET", &format!("/v2/{REPO}/manifests/v9"));
    assert_eq!(asked, 1, "the 404 was remembered: one upstream request for three asks");
    let missing = berth_shared::Digest::of(b"never pushed");
    for _ in 0..2 {
        let r = client::get(&format!("{}/v2/{REPO}/blobs/{missing}", edge.url())).await;
        assert_eq!((r.status, r.error_code().as_str()), (404, "BLOB_UNKNOWN"));
    }
    assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{missing}")), 1);

    // Pushed now, and the tag invalidated: the next ask goes upstream and finds it.
    origin.put_manifest(REPO, Some("v9"), OCI_MANIFEST, image_manifest(9));
    let purge = format!("{}/api/v1/purge", edge.admin_url());
    let doc = format!(r#"{{"repository":"{REPO}","tag":"v9"}}"#);
    assert_eq!(client::send(Method::POST, &purge, &[], doc).await.status, 200);
    assert_eq!(get_manifest(&edge, "v9", &[OCI_MANIFEST]).await.status, 200);
}

#[tokio::test]
async fn upstream_client_errors_reach_the_client_as_themselves_never_as_502() {
    let origin = Origin::start().await;
    let edge = edge::start(&origin.url());
    for status in [400u16, 405, 410, 451] {
        let tag = format!("s{status}");
        origin.fault(&format!("/v2/{REPO}/manifests/{tag}"), Fault::Status(status));
        let r = get_manifest(&edge, &tag, &[OCI_MANIFEST]).await;
        assert_eq!(r.status, status, "upstream {status}");
        let body = String::from_utf8_lossy(r.bytes()).to_string();
        assert!(!body.contains("127.0.0.1"), "no upstream address in the body: {body}");
    }
}

#[tokio::test]
async fn a_manifest_whose_declared_type_contradicts_its_content_is_refused_and_not_cached() {
    let origin = Origin::start().await;
    let image = image_manifest(3);
    let as_index = origin.put_manifest(REPO, Some("lying"), "application/vnd.oci.image.index.v1+json", image.clone());
    let edge = edge::start(&origin.url());
    let accept = ["application/vnd.oci.image.index.v1+json", OCI_MANIFEST];
    let r = get_manifest(&edge, "lying", &accept).await;
    assert_eq!((r.status, r.error_code().as_str()), (502, "MANIFEST_INVALID"), "{:?}", r.body);
    let r = get_manifest(&edge, &as_index.to_string(), &accept).await;
    assert_eq!(r.status, 502, "refused by digest too");
    assert!(
        !edge.running().state.fills.store().entry_path(&berth_edge::cache::EntryKey::manifest(as_index)).exists(),
        "not cached"
    );
    let both = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","manifests":[],"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":1}},"layers":[]}}"#,
        berth_shared::Digest::of(b"c")
    );
    origin.put_manifest(REPO, Some("both"), OCI_MANIFEST, both);
    let r = get_manifest(&edge, "both", &accept).await;
    assert_eq!((r.status, r.error_code().as_str()), (502, "MANIFEST_INVALID"));
    assert!(edge.metric("berth_edge_invalid_manifests_total").await >= 2.0);
}

#[tokio::test]
async fn tag_revalidation_takes_only_a_manifest_type_from_the_head() {
    let origin = Origin::start().await;
    // The upstream labels the manifest as a blob: the HEAD cannot be trusted for the mapping, so
    // the edge fetches the document and checks it.
    let digest = origin.put_manifest(REPO, Some("v1"), "application/octet-stream", image_manifest(4));
    let edge = edge_with_ttl(&origin, 0, 0);
    let r = get_manifest(&edge, "v1", &[OCI_MANIFEST]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(OCI_MANIFEST), "the type the document declares");
    assert_eq!(r.header("docker-content-digest"), Some(digest.to_string().as_str()));
    assert!(origin.count("GET", &format!("/v2/{REPO}/manifests/v1")) >= 1, "fetched, not taken from the HEAD");
}
