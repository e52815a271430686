//! The distributor's API refuses bad and unauthorized requests with clear errors.

use berth_tests::client;
use berth_tests::fleet::{listener, DistributorProcess, ADMIN_TOKEN, EDGE_TOKEN};
use http::Method;

async fn post(url: &str, token: Option<&str>, body: &str) -> client::Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    client::send(Method::POST, url, &headers, body.to_owned()).await
}

async fn bad_and_unauthorized_requests_get_400_and_401_with_json_errors() {
    let work = tempfile::tempdir().unwrap();
    let d = DistributorProcess::start(work.path(), &listener(), 100, &work.path().join("d.log"));
    let prefetch = format!("{}/api/v1/prefetch", d.url());
    let good = r#"{"images":["registry.test/a/b:1"]}"#;

    for token in [None, Some("wrong"), Some(EDGE_TOKEN)] {
        let r = post(&prefetch, token, good).await;
        assert_eq!(r.status, 401, "token {token:?}");
        assert_eq!(r.json()["error"]["code"], "unauthorized");
    }
    let watch = client::request(
        Method::GET,
        &format!("{}/api/v1/watch?since=0", d.url()),
        &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    )
    .await;
    assert_eq!(watch.status, 401, "the watch wants an edge token");

    let cases = [
        (r#"{"images":[]}"#, "images"),
        (r#"{"images":["UPPER/case:1"]}"#, "images[0]"),
        (r#"{"images":["a/b:1"],"platforms":["linux"]}"#, "platforms[0]"),
        (r#"{"images":["a/b:1"],"colour":"blue"}"#, "colour"),
        (r#"{"images":"a/b:1"}"#, "images"),
        (r#"not json"#, ""),
    ];
    for (body, field) in cases {
        let r = post(&prefetch, Some(ADMIN_TOKEN), body).await;
        assert_eq!(r.status, 400, "{body}");
        let code = r.json()["error"]["code"].as_str().unwrap_or_default().to_owned();
        let message = r.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
        let expected = if field.is_empty() { "invalid_document" } else { "invalid_field" };
        assert_eq!(code, expected, "{body}: {message}");
        assert!(message.starts_with(field) && !message.is_empty(), "{body}: {message} does not name {field}");
    }
    let inv = format!("{}/api/v1/invalidations", d.url());
    let r = post(&inv, Some(ADMIN_TOKEN), r#"{"repository":"a/b","digest":"sha256:nope"}"#).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().starts_with("digest"));
    let r = post(&inv, Some(ADMIN_TOKEN), r#"{"repository":"../etc"}"#).await;
    assert_eq!(r.status, 400);

    let report = format!("{}/api/v1/edges/report", d.url());
    assert_eq!(post(&report, Some(EDGE_TOKEN), "{}").await.status, 400);
    assert_eq!(post(&report, Some(ADMIN_TOKEN), "{}").await.status, 401);

    let unknown = client::request(
        Method::GET,
        &format!("{}/api/v1/prefetch/pf-nope", d.url()),
        &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    )
    .await;
    assert_eq!(unknown.status, 404);
    let bad_since = client::request(
        Method::GET,
        &format!("{}/api/v1/watch?since=x", d.url()),
        &[("Authorization", &format!("Bearer {EDGE_TOKEN}"))],
    )
    .await;
    assert_eq!(bad_since.status, 400);

    let ahead = client::request(
        Method::GET,
        &format!("{}/api/v1/watch?since=999999", d.url()),
        &[("Authorization", &format!("Bearer {EDGE_TOKEN}"))],
    )
    .await;
    assert_eq!(ahead.status, 409, "an edge ahead of the log is told to start over");
    assert_eq!(ahead.json()["error"]["code"], "ahead_of_log");

    let accepted = post(&prefetch, Some(ADMIN_TOKEN), good).await;
    assert_eq!(accepted.status, 202);
    assert!(accepted.json()["id"].as_str().unwrap().starts_with("pf-"));
}

async fn an_edge_token_bound_to_a_node_and_region_reports_only_as_that_edge() {
    let work = tempfile::tempdir().unwrap();
    let tokens = work.path().join("edge-tokens");
    std::fs::write(&tokens, "shared-token\nedge-1 eu-west bound-token\n").unwrap();
    let admin = berth_tests::secret_file(ADMIN_TOKEN);
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n{}[auth]\nadmin_tokens_file = {:?}\nedge_tokens_file = {:?}\n",
        berth_tests::fleet::store_table(&work.path().join("store")),
        admin.display().to_string(),
        tokens.display().to_string()
    );
    let config = berth_distributor::config::parse(&text).unwrap();
    let d = berth_distributor::Distributor::build(&config).unwrap().spawn();
    let report = format!("{}/api/v1/edges/report", d.url());
    let as_edge =
        |id: &str, region: &str| format!(r#"{{"id":"{id}","region":"{region}","version":"t","applied_version":0}}"#);
    assert_eq!(post(&report, Some("bound-token"), &as_edge("edge-1", "eu-west")).await.status, 200);
    for (id, region) in [("edge-2", "eu-west"), ("edge-1", "us-east")] {
        let r = post(&report, Some("bound-token"), &as_edge(id, region)).await;
        assert_eq!((r.status, r.json()["error"]["code"].as_str()), (403, Some("wrong_edge")), "{id} {region}");
    }
    assert_eq!(post(&report, Some("shared-token"), &as_edge("edge-9", "ap-south")).await.status, 200);
    let edges = client::request(
        Method::GET,
        &format!("{}/api/v1/edges", d.url()),
        &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    )
    .await
    .json();
    let ids: Vec<&str> = edges.as_array().unwrap().iter().filter_map(|e| e["id"].as_str()).collect();
    assert!(ids.contains(&"edge-1") && ids.contains(&"edge-9") && !ids.contains(&"edge-2"), "{ids:?}");

    std::fs::write(&tokens, "edge-1 eu-west\n").unwrap();
    let err = berth_distributor::config::parse(&text).unwrap_err().to_string();
    assert!(err.contains("auth.edge_tokens_file: entry 1"), "{err}");
}

async fn a_batch_of_pull_counts_sent_again_is_counted_once() {
    let work = tempfile::tempdir().unwrap();
    let d = DistributorProcess::start(work.path(), &listener(), 100, &work.path().join("d.log"));
    let report = format!("{}/api/v1/edges/report", d.url());
    let with_pulls = |batch: u64, n: u64| {
        format!(
            r#"{{"id":"edge-1","region":"eu","version":"t","applied_version":0,"pulls":{{"batch":{batch},"repositories":[{{"name":"docker.io/team/app","count":{n}}}]}}}}"#
        )
    };
    // The first attempt was recorded but its answer lost: the edge sends the batch again; and
    // an attempt that was slow arrives after the next batch.
    for (body, why) in [
        (with_pulls(7, 3), "first"),
        (with_pulls(7, 3), "again"),
        (with_pulls(8, 2), "next batch"),
        (with_pulls(7, 3), "late copy"),
    ] {
        assert_eq!(post(&report, Some(EDGE_TOKEN), &body).await.status, 200, "{why}");
    }
    let r = client::request(
        Method::GET,
        &format!("{}/api/v1/analytics/pulls?region=eu", d.url()),
        &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    )
    .await;
    assert_eq!(r.json()["repositories"][0]["count"], 5, "batch 7 once, and batch 8: {}", r.json());
}

on_both_stores!(
    a_batch_of_pull_counts_sent_again_is_counted_once,
    bad_and_unauthorized_requests_get_400_and_401_with_json_errors,
    an_edge_token_bound_to_a_node_and_region_reports_only_as_that_edge
);
