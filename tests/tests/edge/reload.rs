//! Reloading the config (what SIGHUP does): new upstreams and access rules take effect for new
//! requests, a response in flight finishes with the config it started with, a bad file is
//! refused with the same message as at start, and a restart-only key is named and refused; the
//! config in force stays either way.

use berth_edge::reload::{reload, ReloadError};
use berth_tests::client;
use berth_tests::edge::{self, TestEdge};
use berth_tests::origin::{Fault, Origin};

fn config_text(dir: &std::path::Path, upstreams: &[(&str, &str)], extra_upstream: &str) -> String {
    let mut text = format!(
        "region = \"test\"\n[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\n",
        dir.join("cache").display().to_string()
    );
    for (i, (name, url)) in upstreams.iter().enumerate() {
        text.push_str(&format!(
            "[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\ndefault = {}\n{extra_upstream}",
            i == 0
        ));
    }
    text
}

/// An edge started from `file` (as the binary is), whose listeners the OS picked.
fn start_from(file: &std::path::Path, dir: tempfile::TempDir) -> TestEdge {
    let config = berth_edge::config::load_file(file).unwrap();
    edge::start_with(config, dir)
}

#[tokio::test]
async fn a_reload_adds_an_upstream_and_an_access_rule_for_new_requests_and_keeps_the_one_in_flight() {
    let (first, second) = (Origin::start().await, Origin::start().await);
    let held = first.put_blob("a/b", vec![1u8; 200_000]);
    let path = format!("/v2/a/b/blobs/{held}");
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    first.fault(&path, Fault::Gate { after: 50_000, gate: gate.clone(), corrupt: false });
    let only_second = second.put_blob("c/d", vec![2u8; 1000]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, config_text(dir.path(), &[("docker.io", &first.url())], "")).unwrap();
    let edge = start_from(&file, dir);
    let in_flight = client::open(&format!("{}{path}", edge.url()), &[]).await;
    first.wait_holding(&path, 1).await;
    let before = client::get(&format!("{}/v2/second.test/c/d/blobs/{only_second}", edge.url())).await;
    assert_eq!(before.status, 404, "second.test is not configured yet");

    // A second upstream, and the first one behind htpasswd.
    let htpasswd = edge.dir.path().join("users.htpasswd");
    berth_tests::write_htpasswd(&htpasswd, &[("u", "p")]);
    let mut text = config_text(edge.dir.path(), &[("docker.io", &first.url()), ("second.test", &second.url())], "");
    text = text.replacen(
        "default = true\n",
        &format!("default = true\naccess = \"htpasswd\"\nhtpasswd_file = {:?}\n", htpasswd.display().to_string()),
        1,
    );
    std::fs::write(&file, text).unwrap();
    reload(&edge.running().state, &file).expect("reloaded");

    let after = client::get(&format!("{}/v2/second.test/c/d/blobs/{only_second}", edge.url())).await;
    assert_eq!(after.status, 200, "the new upstream serves");
    let other = first.put_blob("a/b", vec![3u8; 100]);
    let protected = client::get(&format!("{}/v2/a/b/blobs/{other}", edge.url())).await;
    assert_eq!(protected.status, 401, "the new access rule applies to new requests");
    gate.notify_waiters();
    let body = in_flight.finish().await.expect("the response in flight completes");
    assert_eq!(body.len(), 200_000);
}

#[tokio::test]
async fn a_bad_file_or_a_restart_only_change_is_refused_and_the_config_in_force_stays() {
    let origin = Origin::start().await;
    let blob = origin.put_blob("a/b", vec![4u8; 100]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    let good = config_text(dir.path(), &[("docker.io", &origin.url())], "");
    std::fs::write(&file, &good).unwrap();
    let edge = start_from(&file, dir);
    let state = &edge.running().state;

    std::fs::write(&file, good.replace("[[upstream]]", "[[upstream]]\ncolour = \"blue\"")).unwrap();
    let err = reload(state, &file).unwrap_err();
    assert!(matches!(err, ReloadError::Invalid(_)) && err.to_string().contains("upstream.0.colour"), "{err}");

    let moved =
        good.replace("[cache]\ndir = ", "[cache]\ndisk_max = \"2GiB\"\ndir = ").replace("threads = 2", "threads = 3");
    std::fs::write(&file, moved).unwrap();
    let err = reload(state, &file).unwrap_err().to_string();
    assert!(err.contains("cache") && err.contains("server.threads") && err.contains("restart"), "{err}");

    let r = client::get(&format!("{}/v2/a/b/blobs/{blob}", edge.url())).await;
    assert_eq!(r.status, 200, "the config in force stays");
}
