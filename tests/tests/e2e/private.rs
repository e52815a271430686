//! A private registry behind the real `berth-edge` binary, over HTTPS with credentials, as users
//! run it: Debian's docker-registry in token-auth mode (a token server with users of different
//! rights) as the origin; the edge on a TLS-only listener with a certificate from a CA made in
//! the test, delegating authorization to the origin (`access = "upstream"`); skopeo, podman and
//! containerd logging in through the edge's own token flow. The origin's access log proves the
//! edge served: every blob reached the origin once, fetched by the edge, never by a client.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use berth_tests::clients::{run, Containerd, Podman};
use berth_tests::edge::EdgeProcess;
use berth_tests::pki::TestCa;
use berth_tests::registry::{tar_image_layout, DockerRegistry};
use berth_tests::token_server::{TokenServer, TokenUser};
use berth_tests::tools::{have, skopeo, RefusingPort};

const EDGE_AGENT: &str = "berth-edge/";

fn can_run(test: &str, tools: &[&str], needs_root: bool) -> bool {
    let mut tools = tools.to_vec();
    tools.extend(["docker-registry", "skopeo"]);
    if let Some(missing) = tools.iter().find(|t| !have(t)) {
        berth_tests::skip(test, &format!("{missing} is not installed (scripts/test installs it)"));
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if needs_root && unsafe { libc::geteuid() } != 0 {
        berth_tests::skip(test, "the containerd daemon needs root");
        return false;
    }
    true
}

/// The token server, the private origin with `team/app:v1` (alice may pull it) and
/// `team/other:v1` (bob may), and the edge binary on HTTPS only. Fields drop in order:
/// processes before the folder.
struct Private {
    edge: EdgeProcess,
    origin: DockerRegistry,
    _tokens: TokenServer,
    ca: TestCa,
    proxy: RefusingPort,
    /// Blobs of team/app:v1 (config, layer).
    blobs: Vec<String>,
    work: tempfile::TempDir,
}

impl Private {
    fn start() -> Private {
        let work = tempfile::tempdir().unwrap();
        let pki = work.path().join("pki");
        let ca = TestCa::new(&pki);
        let pair = ca.issue(&pki, "edge");
        let tokens = TokenServer::start(
            &work.path().join("tokens"),
            vec![
                TokenUser::new("pusher", "pusher-pw", &[("*", &["pull", "push"])]),
                TokenUser::new("edge", "edge-pw", &[("*", &["pull"])]),
                TokenUser::new("alice", "alice-pw", &[("team/app", &["pull"])]),
                TokenUser::new("bob", "bob-pw", &[("team/other", &["pull"])]),
            ],
        );
        let origin = DockerRegistry::start_with(&work.path().join("origin"), &tokens.registry_auth_yaml());
        let blobs = push(work.path(), &origin, "team/app");
        push(work.path(), &origin, "team/other");
        let password = work.path().join("edge-password");
        std::fs::write(&password, "edge-pw").unwrap();
        let key = work.path().join("signing-key");
        std::fs::write(&key, "a-signing-key-shared-by-the-edges-of-a-region").unwrap();
        let config = work.path().join("edge.toml");
        std::fs::write(
            &config,
            format!(
                "region = \"e2e\"\n[listen]\nhttp = \"off\"\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[tls]\ncert = {cert:?}\nkey = {tls_key:?}\n[auth]\nsigning_key_file = {key:?}\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {cache:?}\ndisk_max = \"1GiB\"\n[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\ndefault = true\nusername = \"edge\"\npassword_file = {password:?}\n",
                cert = pair.cert.display().to_string(),
                tls_key = pair.key.display().to_string(),
                key = key.display().to_string(),
                cache = work.path().join("edge-cache").display().to_string(),
                name = origin.addr,
                url = origin.url(),
                password = password.display().to_string(),
            ),
        )
        .unwrap();
        let edge = EdgeProcess::start(&config, &work.path().join("edge.log"));
        assert!(edge.plain.is_none(), "the plain listener is off");
        Private { edge, origin, _tokens: tokens, ca, proxy: RefusingPort::new(), blobs, work }
    }

    /// One series of the edge's `/metrics`.
    async fn metric(&self, series: &str) -> f64 {
        let text = berth_tests::client::get(&format!("http://{}/metrics", self.edge.admin)).await;
        berth_tests::edge::metric_value(&String::from_utf8_lossy(text.bytes()), series)
    }

    fn edge_log(&self) -> String {
        std::fs::read_to_string(&self.edge.log).unwrap_or_default()
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn edge_addr(&self) -> std::net::SocketAddr {
        self.edge.tls.expect("TLS listener")
    }

    /// A folder with the CA as `ca.crt` (skopeo's and podman's `--cert-dir`).
    fn cert_dir(&self) -> String {
        self.ca.cert_dir(&self.dir("certs")).display().to_string()
    }

    /// Requests the client `agent` sent to the origin itself (after a refusal, containerd falls
    /// back to the registry named as `server`: that is its design, not the edge's doing).
    async fn client_requests(&self, agent: &str) -> usize {
        self.origin.sync_log().await;
        self.origin.access_count("/v2/", agent)
    }

    /// Each blob reached the origin exactly once, from the edge; the client `agent` sent the
    /// origin no more than `before` requests (none since the pulls under test began).
    async fn assert_origin_saw_only_the_edge(&self, agent: &str, before: usize) {
        self.origin.sync_log().await;
        let log = self.origin.access_log();
        assert_eq!(self.origin.access_count("/v2/", agent), before, "{agent} reached the origin itself:\n{log}");
        for blob in &self.blobs {
            let by_edge = self.origin.access_count(&format!("GET /v2/team/app/blobs/{blob} "), EDGE_AGENT);
            assert_eq!(by_edge, 1, "{blob} was not fetched once by the edge:\n{log}");
        }
        let all = self.origin.access_count("GET /v2/team/app/blobs/", "");
        assert_eq!(all, self.blobs.len(), "origin blob GETs (incl. refused ones):\n{log}");
    }
}

/// Pushes a one-layer image of fresh content as `repo:v1` with the pusher's credentials.
fn push(work: &std::path::Path, origin: &DockerRegistry, repo: &str) -> Vec<String> {
    let layout = work.join(format!("layout-{}", repo.replace('/', "-")));
    let blobs = tar_image_layout(&layout, "v1", 1);
    let dest = format!("docker://{}/{repo}:v1", origin.addr);
    let src = format!("oci:{}:v1", layout.display());
    skopeo(&["copy", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds", "pusher:pusher-pw", &src, &dest]);
    blobs
}

/// skopeo copy from the edge with `creds` (`None`: anonymous); the run, failed or not.
fn skopeo_pull(p: &Private, creds: Option<&str>, dest: &str) -> berth_tests::clients::Ran {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--src-cert-dir", &p.cert_dir()]);
    match creds {
        Some(c) => cmd.args(["--src-creds", c]),
        None => cmd.arg("--src-no-creds"),
    };
    cmd.arg(format!("docker://{}/team/app:v1", p.edge_addr()));
    // `dir:` keeps every blob as it came (an `oci:` layout would compress the tar layer).
    cmd.arg(format!("dir:{}", p.dir(dest).display()));
    run(&mut cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_a_private_image_over_https_with_the_right_credentials_only() {
    if !can_run("skopeo_pulls_a_private_image_over_https_with_the_right_credentials_only", &[], false) {
        return;
    }
    let p = Private::start();
    // The image was pushed with skopeo: only requests after that count.
    let before = p.client_requests("skopeo/").await;
    for (creds, who) in [(None, "anonymous"), (Some("alice:wrong"), "a wrong password"), (Some("bob:bob-pw"), "bob")] {
        let ran = skopeo_pull(&p, creds, &format!("refused-{}", who.replace(' ', "-")));
        assert!(!ran.status.success(), "{who} must not pull team/app: {}", ran.output);
        assert!(
            ran.output.contains("unauthorized") || ran.output.contains("denied") || ran.output.contains("401"),
            "{who}: {}",
            ran.output
        );
    }
    p.origin.sync_log().await;
    assert_eq!(p.origin.access_count("GET /v2/team/app/blobs/", ""), 0, "nothing fetched for refused clients");

    let ran = skopeo_pull(&p, Some("alice:alice-pw"), "alice");
    assert!(ran.status.success(), "alice pulls: {}\nedge log:\n{}", ran.output, p.edge_log());
    for blob in &p.blobs {
        let hex = blob.trim_start_matches("sha256:");
        let bytes = std::fs::read(p.dir("alice").join(hex)).unwrap_or_else(|e| panic!("{blob} pulled: {e}"));
        assert_eq!(berth_shared::Digest::of(&bytes).to_string(), *blob, "byte-exact");
    }
    let again = skopeo_pull(&p, Some("alice:alice-pw"), "alice-again");
    assert!(again.status.success(), "{}", again.output);
    p.assert_origin_saw_only_the_edge("skopeo/", before).await;
    let after = skopeo_pull(&p, Some("bob:bob-pw"), "bob-after");
    assert!(!after.status.success(), "bob is refused the cached blobs too: {}", after.output);
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_pulls_a_private_image_through_an_https_mirror_with_credentials() {
    if !can_run("podman_pulls_a_private_image_through_an_https_mirror_with_credentials", &["podman"], false) {
        return;
    }
    let p = Private::start();
    let podman = Podman::with_mirror(&p.dir("podman"), &p.origin.addr.to_string(), p.edge_addr(), false, p.proxy.addr);
    let image = format!("{}/team/app:v1", p.origin.addr);
    let cert_dir = p.cert_dir();
    // Podman never sends the primary registry's credentials to a mirror: users log in to the
    // edge itself (`podman login`), which stores them in the auth file for the mirror's host.
    let edge = p.edge_addr().to_string();
    for (user, password) in [("bob", "bob-pw"), ("alice", "alice-pw")] {
        let authfile = p.dir(&format!("auth-{user}.json"));
        let login = podman.login(&edge, user, password, &authfile, &cert_dir);
        assert!(login.status.success(), "podman login {user}: {}\nedge log:\n{}", login.output, p.edge_log());
    }
    let wrong = podman.login(&edge, "alice", "wrong", &p.dir("auth-wrong.json"), &cert_dir);
    assert!(!wrong.status.success(), "a wrong password is refused at login: {}", wrong.output);
    let authfile = |user: &str| p.dir(&format!("auth-{user}.json")).display().to_string();
    let refused = podman.pull_with(&image, "bob", &["--cert-dir", &cert_dir, "--authfile", &authfile("bob")]);
    assert!(!refused.status.success(), "bob must not pull team/app: {}", refused.output);
    let before = p.client_requests("containers/").await;
    for state in ["cold", "warm"] {
        let ran = podman.pull_with(&image, state, &["--cert-dir", &cert_dir, "--authfile", &authfile("alice")]);
        assert!(ran.status.success(), "podman {state} pull: {}\nedge log:\n{}", ran.output, p.edge_log());
    }
    p.assert_origin_saw_only_the_edge("containers/", before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_a_private_image_through_an_https_hosts_toml_mirror_with_credentials() {
    let test = "containerd_pulls_a_private_image_through_an_https_hosts_toml_mirror_with_credentials";
    if !can_run(test, &["containerd", "ctr"], true) {
        return;
    }
    let p = Private::start();
    let containerd = Containerd::start(&p.dir("containerd"), p.proxy.addr);
    let hosts = p.dir("hosts");
    let name = p.origin.addr.to_string();
    Containerd::mirror_tls(&hosts, &name, &p.origin.url(), p.edge_addr(), &p.ca.pem);
    let image = format!("{name}/team/app:v1");
    let refused = containerd.pull_as(&hosts, &image, "bob", "bob:bob-pw");
    assert!(!refused.status.success(), "bob must not pull team/app: {}", refused.output);
    let before = p.client_requests("containerd/").await;
    let mut direct = Vec::new();
    // Cold: fetched; warm: disk hits, read into memory; hot: memory hits, answered directly.
    for state in ["cold", "warm", "hot"] {
        direct.push(p.metric("berth_edge_direct_answers_total").await);
        let ran = containerd.pull_as(&hosts, &image, state, "alice:alice-pw");
        assert!(ran.status.success(), "ctr {state} pull: {}\nedge log:\n{}", ran.output, p.edge_log());
    }
    p.assert_origin_saw_only_the_edge("containerd/", before).await;
    let hot = p.metric("berth_edge_direct_answers_total").await - direct[2];
    assert!(hot >= p.blobs.len() as f64, "the hot pull's blobs were direct answers: {hot} ({direct:?})");
    let log = std::fs::read_to_string(&p.edge.log).unwrap_or_default();
    assert!(log.contains("token issued"), "containerd logged in at the edge's /token");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_binary_reloads_its_certificate_on_sighup() {
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::new(work.path());
    let (first, second) = (ca.issue(work.path(), "first"), ca.issue(work.path(), "second"));
    let (cert, key) = (work.path().join("served.crt"), work.path().join("served.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let config = work.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"off\"\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\nwatch = \"0s\"\n[server]\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\n[[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\ndefault = true\n",
            cert.display().to_string(),
            key.display().to_string(),
            work.path().join("cache").display().to_string()
        ),
    )
    .unwrap();
    let edge = EdgeProcess::start(&config, &work.path().join("edge.log"));
    let addr = edge.tls.unwrap();
    let served = || berth_tests::client::peer_certificate(addr, ca.client_config(&[]));
    assert_eq!(served().await, first.der);
    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    assert_eq!(served().await, first.der, "watch = \"0s\": no reload without a signal");
    berth_tests::eventually("the certificate watch runs", Duration::from_secs(10), || {
        std::fs::read_to_string(&edge.log).unwrap_or_default().contains("watching the TLS certificate")
    })
    .await;
    // SAFETY: kill(2) on the child's pid.
    unsafe { libc::kill(edge.child.id() as i32, libc::SIGHUP) };
    berth_tests::eventually_async("the second certificate is served after SIGHUP", Duration::from_secs(10), || async {
        served().await == second.der
    })
    .await;
}

/// `/etc/docker/certs.d/<host:port>/ca.crt`: where dockerd looks for a registry's CA (it has no
/// flag for another folder). Removed when dropped.
struct DockerCa(PathBuf);

impl DockerCa {
    fn install(registry: std::net::SocketAddr, ca: &std::path::Path) -> DockerCa {
        let dir = PathBuf::from(format!("/etc/docker/certs.d/{registry}"));
        std::fs::create_dir_all(&dir).expect("certs.d");
        std::fs::copy(ca, dir.join("ca.crt")).expect("CA into certs.d");
        DockerCa(dir)
    }
}

impl Drop for DockerCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_logs_in_to_the_edge_over_https_and_pulls_a_private_image_with_the_right_credentials_only() {
    let test = "docker_logs_in_to_the_edge_over_https_and_pulls_a_private_image_with_the_right_credentials_only";
    if !can_run(test, &["containerd", "dockerd", "docker"], true) {
        return;
    }
    let p = Private::start();
    let edge = p.edge_addr();
    let _ca = DockerCa::install(edge, &p.ca.pem);
    let containerd = Containerd::start(&p.dir("containerd"), p.proxy.addr);
    let image = format!("{edge}/team/app:v1");
    let before = p.client_requests("docker/").await;
    let host = edge.to_string();

    let bob = berth_tests::clients::Dockerd::start(&p.dir("docker-bob"), &containerd, "moby-bob", edge, p.proxy.addr);
    let login = bob.docker(&["login", &host, "-u", "bob", "-p", "bob-pw"]);
    assert!(login.status.success(), "bob logs in (his credentials are valid): {}", login.output);
    let refused = bob.docker(&["pull", &image]);
    assert!(!refused.status.success(), "bob must not pull team/app: {}", refused.output);
    drop(bob);

    let alice =
        berth_tests::clients::Dockerd::start(&p.dir("docker-alice"), &containerd, "moby-alice", edge, p.proxy.addr);
    let wrong = alice.docker(&["login", &host, "-u", "alice", "-p", "wrong"]);
    assert!(!wrong.status.success(), "a wrong password is refused at login: {}", wrong.output);
    let login = alice.docker(&["login", &host, "-u", "alice", "-p", "alice-pw"]);
    assert!(login.status.success(), "docker login: {}\nedge log:\n{}", login.output, p.edge_log());
    let pulled = alice.docker(&["pull", &image]);
    assert!(pulled.status.success(), "docker pull: {}\nedge log:\n{}", pulled.output, p.edge_log());
    p.assert_origin_saw_only_the_edge("docker/", before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_with_htpasswd_auth_decides_through_basic_auth_who_may_pull_through_the_edge() {
    if !can_run("a_registry_with_htpasswd_auth_decides_through_basic_auth_who_may_pull_through_the_edge", &[], false) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let htpasswd = work.path().join("registry.htpasswd");
    berth_tests::write_htpasswd(&htpasswd, &[("edge", "edge-pw"), ("alice", "alice-pw")]);
    let auth = format!("auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n", htpasswd.display());
    let origin = DockerRegistry::start_with(&work.path().join("origin"), &auth);
    let layout = work.path().join("layout");
    let blobs = tar_image_layout(&layout, "v1", 1);
    let dest = format!("docker://{}/team/app:v1", origin.addr);
    let src = format!("oci:{}:v1", layout.display());
    skopeo(&["copy", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds", "edge:edge-pw", &src, &dest]);
    let ca = TestCa::new(&work.path().join("pki"));
    let pair = ca.issue(&work.path().join("pki"), "edge");
    let password = work.path().join("edge-password");
    std::fs::write(&password, "edge-pw").unwrap();
    let config = work.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"off\"\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\n[[upstream]]\nname = \"{}\"\nurl = \"{}\"\ndefault = true\nusername = \"edge\"\npassword_file = {:?}\n",
            pair.cert.display().to_string(),
            pair.key.display().to_string(),
            work.path().join("cache").display().to_string(),
            origin.addr,
            origin.url(),
            password.display().to_string()
        ),
    )
    .unwrap();
    let edge = EdgeProcess::start(&config, &work.path().join("edge.log"));
    let certs = ca.cert_dir(&work.path().join("certs")).display().to_string();
    let pull = |creds: Option<&str>, dest: &str| {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--src-cert-dir", &certs]);
        match creds {
            Some(c) => cmd.args(["--src-creds", c]),
            None => cmd.arg("--src-no-creds"),
        };
        cmd.arg(format!("docker://{}/team/app:v1", edge.tls.unwrap()));
        cmd.arg(format!("dir:{}", work.path().join(dest).display()));
        run(&mut cmd)
    };
    for (creds, who) in [(None, "anonymous"), (Some("alice:wrong"), "wrong")] {
        let ran = pull(creds, who);
        assert!(!ran.status.success(), "{who} must not pull: {}", ran.output);
    }
    let ran = pull(Some("alice:alice-pw"), "alice");
    assert!(ran.status.success(), "alice pulls: {}", ran.output);
    for blob in &blobs {
        let bytes = std::fs::read(work.path().join("alice").join(blob.trim_start_matches("sha256:"))).unwrap();
        assert_eq!(berth_shared::Digest::of(&bytes).to_string(), *blob);
    }
    origin.sync_log().await;
    for blob in &blobs {
        let by_edge = origin.access_count(&format!("GET /v2/team/app/blobs/{blob} "), EDGE_AGENT);
        assert!(by_edge >= 1, "{blob} fetched by the edge:\n{}", origin.access_log());
    }
}
