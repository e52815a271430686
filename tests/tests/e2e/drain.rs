//! SIGTERM on the real binary: `/readyz` 503 at once while the admin listener keeps answering,
//! new requests still served for `drain_period`, then refused; the response in flight completes
//! byte-exact and the process exits as soon as it has, long before `grace_period`.

use std::time::{Duration, Instant};

use berth_tests::client;
use berth_tests::edge::EdgeProcess;
use berth_tests::origin::{Fault, Origin};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_serves_the_drain_period_finishes_in_flight_and_exits_early() {
    let origin = Origin::start().await;
    let body = berth_tests::registry::random_bytes(2 << 20);
    let digest = origin.put_blob("team/app", body.clone());
    let path = format!("/v2/team/app/blobs/{digest}");
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    origin.fault(&path, Fault::Gate { after: 1 << 20, gate: gate.clone(), corrupt: false });
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\nthreads = 2\ndrain_period = \"2s\"\ngrace_period = \"60s\"\n[cache]\ndir = {:?}\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
            work.path().join("cache").display().to_string(),
            origin.url()
        ),
    )
    .unwrap();
    let mut edge = EdgeProcess::start(&config, &work.path().join("edge.log"));
    let admin = format!("http://{}", edge.admin);
    let mut held = client::open(&format!("{}{path}", edge.url()), &[]).await;
    origin.wait_holding(&path, 1).await;
    held.read_at_least(1 << 20).await.unwrap();

    // SAFETY: kill(2) on the child's pid.
    unsafe { libc::kill(edge.child.id() as i32, libc::SIGTERM) };
    let sent = Instant::now();
    berth_tests::eventually_async("readyz turns 503", Duration::from_secs(5), || async {
        client::get(&format!("{admin}/readyz")).await.status == 503
    })
    .await;
    let during = client::get(&format!("{}/v2/", edge.url())).await;
    assert_eq!(during.status, 200, "new requests are served during the drain period");
    assert!(sent.elapsed() < Duration::from_secs(2), "checked within the drain period");
    berth_tests::eventually_async(
        "new connections refused after the drain period",
        Duration::from_secs(10),
        || async {
            let addr = edge.http();
            let probe = async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(addr).await?;
                s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: e\r\n\r\n").await?;
                let mut buf = [0u8; 16];
                s.read(&mut buf).await
            };
            !matches!(probe.await, Ok(n) if n > 0)
        },
    )
    .await;
    assert_eq!(client::get(&format!("{admin}/healthz")).await.status, 200, "the admin listener still answers");

    gate.notify_waiters();
    let finished = held.finish().await.expect("the response in flight completes");
    assert!(finished.as_ref() == body.as_slice(), "byte-exact");
    let exited = client::bounded("the edge exits once idle", async {
        loop {
            if let Some(status) = edge.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(exited.success(), "clean exit: {exited:?}");
    assert!(sent.elapsed() < Duration::from_secs(20), "exited without waiting the 60 s grace period");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_starting_edge_answers_readyz_503_starting_while_it_catches_up_with_the_distributor() {
    // A distributor that takes connections and never answers: the edge waits its
    // startup_sync_timeout before serving.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let work = tempfile::tempdir().unwrap();
    let token = work.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let config = work.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\n[distributor]\nurl = \"http://{}\"\ntoken_file = {:?}\nstartup_sync_timeout = \"4s\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\ndefault = true\n",
            work.path().join("cache").display().to_string(),
            silent.local_addr().unwrap(),
            token.display().to_string()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(berth_tests::edge::binary("berth-edge"))
        .arg("--config")
        .arg(&config)
        .env("BERTH_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let admin: std::net::SocketAddr =
        berth_tests::tools::follow_output(&mut child, &work.path().join("edge.log"), |line| {
            line.contains("catching up with the distributor").then_some(())?;
            line.split_whitespace().find_map(|w| w.strip_prefix("admin=")).and_then(|v| v.parse().ok())
        })
        .expect("the edge logs its admin address while it catches up");
    let ready = client::get(&format!("http://{admin}/readyz")).await;
    assert_eq!(ready.status, 503);
    assert!(String::from_utf8_lossy(ready.bytes()).contains("starting"), "{:?}", ready.body);
    assert_eq!(client::get(&format!("http://{admin}/healthz")).await.status, 200, "healthz answers");
    // Once the catch-up gives up, the edge serves and is ready.
    berth_tests::eventually_async("ready after the startup sync timeout", Duration::from_secs(20), || async {
        client::get(&format!("http://{admin}/readyz")).await.status == 200
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config_file_and_a_bad_file_keeps_the_config_in_force() {
    let (first, second) = (Origin::start().await, Origin::start().await);
    let blob = second.put_blob("c/d", vec![5u8; 1000]);
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("edge.toml");
    let text = |upstreams: &str| {
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n{upstreams}",
            work.path().join("cache").display().to_string(),
            first.url()
        )
    };
    std::fs::write(&config, text("")).unwrap();
    let edge = EdgeProcess::start(&config, &work.path().join("edge.log"));
    let url = format!("{}/v2/second.test/c/d/blobs/{blob}", edge.url());
    assert_eq!(client::get(&url).await.status, 404);
    let metrics = format!("http://{}/metrics", edge.admin);
    let counted = |result: &'static str| {
        let metrics = metrics.clone();
        async move {
            let text = client::get(&metrics).await;
            berth_tests::edge::metric_value(
                &String::from_utf8_lossy(text.bytes()),
                &format!("berth_edge_config_reloads_total{{result=\"{result}\""),
            )
        }
    };

    berth_tests::eventually("the config watch runs", Duration::from_secs(10), || {
        std::fs::read_to_string(&edge.log).unwrap_or_default().contains("the config reloads on SIGHUP")
    })
    .await;
    std::fs::write(&config, text(&format!("[[upstream]]\nname = \"second.test\"\nurl = \"{}\"\n", second.url())))
        .unwrap();
    // SAFETY: kill(2) on the child's pid.
    unsafe { libc::kill(edge.child.id() as i32, libc::SIGHUP) };
    berth_tests::eventually_async("the reloaded upstream serves", Duration::from_secs(10), || async {
        client::get(&url).await.status == 200
    })
    .await;
    assert_eq!(counted("loaded").await, 1.0);

    std::fs::write(&config, "this is not toml [").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(edge.child.id() as i32, libc::SIGHUP) };
    berth_tests::eventually_async("the bad file is counted as refused", Duration::from_secs(10), || async {
        counted("refused").await >= 1.0
    })
    .await;
    assert_eq!(client::get(&url).await.status, 200, "the config in force stays");
}
