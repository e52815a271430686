//! The access log: one JSON line per request with what was asked, by whom, how it was served and
//! how long it took; hits sampled when asked.

use std::time::Duration;

use berth_tests::client;
use berth_tests::edge;
use berth_tests::origin::Origin;

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn every_request_gets_a_json_access_log_line_with_its_outcome_tier_and_timings() {
    let origin = Origin::start().await;
    let digest = origin.put_blob("team/app", vec![1u8; 5000]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let path = log.display().to_string();
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| c.log.access = path);
    let url = format!("{}/v2/team/app/blobs/{digest}", edge.url());
    client::get(&url).await.bytes();
    edge.published(digest).await;
    client::get(&url).await.bytes();
    let missing = berth_shared::Digest::of(b"nope");
    assert_eq!(client::get(&format!("{}/v2/team/app/blobs/{missing}", edge.url())).await.status, 404);
    berth_tests::eventually("three lines written", Duration::from_secs(10), || lines(&log).len() >= 3).await;
    let all = lines(&log);
    let (miss, hit, unknown) = (&all[0], &all[1], &all[2]);
    assert_eq!(miss["outcome"], "miss");
    assert_eq!(miss["tier"], "upstream");
    assert_eq!(hit["outcome"], "hit");
    assert_eq!(hit["status"], 200);
    assert_eq!(hit["bytes"], 5000);
    assert_eq!(hit["repository"], "team/app");
    assert_eq!(hit["reference"], digest.to_string());
    assert_eq!(hit["upstream"], "docker.io");
    assert_eq!(hit["method"], "GET");
    assert_eq!(hit["kind"], "blob");
    assert!(hit["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(hit["ttfb_ms"].as_f64().unwrap() <= hit["duration_ms"].as_f64().unwrap());
    assert_eq!(hit["request_id"].as_str().unwrap().len(), 16);
    assert!(hit["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(unknown["status"], 404);
}

#[tokio::test]
async fn hits_can_be_sampled_while_misses_are_always_logged() {
    let origin = Origin::start().await;
    let digest = origin.put_blob("team/app", vec![2u8; 100]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let path = log.display().to_string();
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.log.access = path;
        c.log.sample_hits = 0.0;
    });
    let url = format!("{}/v2/team/app/blobs/{digest}", edge.url());
    client::get(&url).await.bytes();
    edge.published(digest).await;
    for _ in 0..5 {
        client::get(&url).await.bytes();
    }
    let other = origin.put_blob("team/app", vec![3u8; 100]);
    client::get(&format!("{}/v2/team/app/blobs/{other}", edge.url())).await.bytes();
    berth_tests::eventually("both misses written", Duration::from_secs(10), || lines(&log).len() >= 2).await;
    let outcomes: Vec<String> = lines(&log).iter().map(|l| l["outcome"].as_str().unwrap().to_owned()).collect();
    assert_eq!(outcomes, vec!["miss", "miss"], "no hit logged at sample_hits = 0");
}
