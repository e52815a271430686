//! Client authorization, on hits too: the Bearer challenge, the edge's token endpoint (GET with
//! Basic credentials or none, the OAuth2 POST form), delegated decisions (`access = "upstream"`)
//! against a token server with two users of different rights, htpasswd users with repository
//! grants, tokens of another key or expired, and a digest named under a repository that does
//! not hold it.

use std::time::Duration;

use berth_edge::access::SigningKey;
use berth_edge::config::AccessMode;
use berth_tests::client::{self, Response};
use berth_tests::edge::{self, TestEdge};
use berth_tests::origin::{basic, Auth, Origin, User};
use http::Method;

const KEY: &str = "0123456789abcdef0123456789abcdef-test-signing-key";

/// An origin whose token server knows `edge` (everything), `alice` (team/app) and `bob`
/// (team/other), and an edge delegating to it with the `edge` credentials.
async fn delegated(extra: &str) -> (Origin, TestEdge, tempfile::TempPath, tempfile::TempPath) {
    let origin = Origin::start().await;
    origin.set_auth(Auth::Users(vec![
        User::new("edge", "edge-pw", &["team/app", "team/other", "team/copy"]),
        User::new("alice", "alice-pw", &["team/app"]),
        User::new("bob", "bob-pw", &["team/other"]),
    ]));
    let password = berth_tests::secret_file("edge-pw");
    let key = berth_tests::secret_file(KEY);
    let (password_path, key_path) = (password.to_path_buf(), key.to_path_buf());
    let edge = edge::start_custom(&[("docker.io", &origin.url())], extra, |c| {
        c.upstream[0].username = Some("edge".into());
        c.upstream[0].password_file = Some(password_path);
        c.auth.signing_key_file = Some(key_path);
    });
    (origin, edge, password, key)
}

async fn token(edge: &TestEdge, scope: &str, credentials: Option<(&str, &str)>) -> Response {
    let url = format!("{}/token?service=berth-edge&scope={}", edge.url(), urlencode(scope));
    let header = credentials.map(|(u, p)| basic(u, p));
    let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
    client::request(Method::GET, &url, &headers).await
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F").replace(' ', "%20")
}

fn bearer(r: &Response) -> String {
    assert_eq!(r.status, 200, "token issued: {:?}", r.body);
    format!("Bearer {}", r.json()["token"].as_str().expect("token"))
}

async fn get_with(url: &str, authorization: &str) -> Response {
    client::request(Method::GET, url, &[("authorization", authorization)]).await
}

#[tokio::test]
async fn a_protected_upstream_challenges_then_serves_the_right_user_hits_included() {
    let (origin, edge, _p, _k) = delegated("").await;
    let body = vec![5u8; 4000];
    let digest = origin.put_blob("team/app", body.clone());
    let url = format!("{}/v2/team/app/blobs/{digest}", edge.url());

    // No credentials: 401 with the challenge clients follow.
    let r = client::get(&url).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "UNAUTHORIZED"));
    let challenge = r.header("www-authenticate").unwrap().to_owned();
    let addr = edge.running().http_addr.unwrap();
    assert_eq!(
        challenge,
        format!(
            r#"Bearer realm="http://{addr}/token",service="berth-edge",scope="repository:docker.io/team/app:pull""#
        )
    );
    let base = client::get(&format!("{}/v2/", edge.url())).await;
    assert_eq!(base.status, 401, "/v2/ challenges too, so Docker logs in");
    assert!(base.header("www-authenticate").unwrap().starts_with("Bearer realm="));
    assert_eq!(origin.count("GET", "/v2/team/app/blobs/"), 0, "nothing fetched for an unauthorized request");

    // The right user: a token, then the blob (a miss, then a hit: both need the token).
    let scope = "repository:docker.io/team/app:pull";
    let alice = bearer(&token(&edge, scope, Some(("alice", "alice-pw"))).await);
    for expected in ["miss", "hit"] {
        let r = get_with(&url, &alice).await;
        assert_eq!(r.status, 200);
        assert!(r.bytes().as_ref() == body.as_slice());
        assert_eq!(r.header("x-berth-cache"), Some(expected));
    }
    let fetched = origin.count("GET", "/v2/team/app/blobs/");
    assert_eq!(get_with(&format!("{}/v2/", edge.url()), &alice).await.status, 200);

    // On the cached blob: no credentials, a wrong password, a user without rights.
    assert_eq!(client::get(&url).await.status, 401, "a hit needs a token too");
    let wrong = token(&edge, scope, Some(("alice", "nope"))).await;
    assert_eq!((wrong.status, wrong.error_code().as_str()), (401, "UNAUTHORIZED"));
    let bob = bearer(&token(&edge, scope, Some(("bob", "bob-pw"))).await);
    let r = get_with(&url, &bob).await;
    assert_eq!(r.status, 401, "bob's token does not name team/app");
    assert!(r.header("www-authenticate").unwrap().contains("scope=\"repository:docker.io/team/app:pull\""));
    let anonymous = bearer(&token(&edge, scope, None).await);
    assert_eq!(get_with(&url, &anonymous).await.status, 401, "an anonymous token grants nothing here");
    assert_eq!(origin.count("GET", "/v2/team/app/blobs/"), fetched, "nothing fetched for the refused requests");
    assert!(edge.metric("berth_edge_auth_total{result=\"challenged\"").await >= 4.0);
    assert!(edge.metric("berth_edge_auth_total{result=\"refused\"").await >= 1.0);
}

#[tokio::test]
async fn tokens_are_checked_locally_and_decisions_cached_for_authz_ttl() {
    let (origin, edge, _p, _k) = delegated("[auth]\nauthz_ttl = \"1h\"\n").await;
    let digests: Vec<_> = (0..5).map(|i| origin.put_blob("team/app", vec![i as u8; 100])).collect();
    let scope = "repository:docker.io/team/app:pull";
    let alice = bearer(&token(&edge, scope, Some(("alice", "alice-pw"))).await);
    let asked = origin.count("GET", "/v2/team/app/tags/list");
    assert!(asked >= 1, "the upstream was asked whether alice may pull team/app");
    for d in &digests {
        assert_eq!(get_with(&format!("{}/v2/team/app/blobs/{d}", edge.url()), &alice).await.status, 200);
    }
    let again = bearer(&token(&edge, scope, Some(("alice", "alice-pw"))).await);
    assert_eq!(get_with(&format!("{}/v2/team/app/blobs/{}", edge.url(), digests[0]), &again).await.status, 200);
    assert_eq!(origin.count("GET", "/v2/team/app/tags/list"), asked, "the decision was reused");
}

#[tokio::test]
async fn the_oauth2_post_form_issues_tokens_like_containerd_asks() {
    let (origin, edge, _p, _k) = delegated("").await;
    let digest = origin.put_blob("team/app", vec![1u8; 10]);
    let form = "grant_type=password&username=alice&password=alice-pw&client_id=containerd&service=berth-edge&scope=repository%3Adocker.io%2Fteam%2Fapp%3Apull";
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let r = client::send(Method::POST, &format!("{}/token", edge.url()), &headers, form).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let access = format!("Bearer {}", r.json()["access_token"].as_str().unwrap());
    assert_eq!(r.json()["expires_in"], 300);
    assert_eq!(get_with(&format!("{}/v2/team/app/blobs/{digest}", edge.url()), &access).await.status, 200);
    let bad = form.replace("alice-pw", "wrong");
    let r = client::send(Method::POST, &format!("{}/token", edge.url()), &headers, bad).await;
    assert_eq!(r.status, 401);
    let refresh = "grant_type=refresh_token&refresh_token=x&service=berth-edge";
    let r = client::send(Method::POST, &format!("{}/token", edge.url()), &headers, refresh).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "UNSUPPORTED"));
    let r = client::request(Method::DELETE, &format!("{}/token", edge.url()), &[]).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn an_expired_token_or_one_of_another_key_gets_a_fresh_challenge() {
    let (origin, edge, _p, _k) = delegated("").await;
    let digest = origin.put_blob("team/app", vec![1u8; 10]);
    let url = format!("{}/v2/team/app/blobs/{digest}", edge.url());
    let grant = vec![("docker.io".to_owned(), "team/app".to_owned())];
    let key = SigningKey::new(KEY.as_bytes().to_vec()).unwrap();
    let (valid, _) = key.issue("alice", grant.clone(), Duration::from_secs(60));
    assert_eq!(get_with(&url, &format!("Bearer {valid}")).await.status, 200, "the edge's key signs it");
    let (expired, _) = key.issue("alice", grant.clone(), Duration::ZERO);
    let r = get_with(&url, &format!("Bearer {expired}")).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().contains("error=\"invalid_token\""));
    assert!(String::from_utf8_lossy(r.bytes()).contains("expired"));
    let other = SigningKey::new(vec![7u8; 32]).unwrap();
    let (forged, _) = other.issue("alice", grant, Duration::from_secs(60));
    assert_eq!(get_with(&url, &format!("Bearer {forged}")).await.status, 401);
    assert_eq!(get_with(&url, "Bearer not-a-token").await.status, 401);
    assert_eq!(get_with(&url, &basic("alice", "alice-pw")).await.status, 401, "Basic is for /token only");
}

#[tokio::test]
async fn a_digest_is_served_under_another_repository_only_once_the_upstream_confirms_it() {
    let (origin, edge, _p, _k) = delegated("").await;
    let body = vec![9u8; 2000];
    let digest = origin.put_blob("team/app", body.clone());
    let all = bearer(&token(&edge, "repository:docker.io/team/app:pull", Some(("edge", "edge-pw"))).await);
    assert_eq!(get_with(&format!("{}/v2/team/app/blobs/{digest}", edge.url()), &all).await.status, 200);
    edge.published(digest).await;

    // bob may pull team/other, which does not hold the digest: refused although it is cached.
    let bob = bearer(&token(&edge, "repository:docker.io/team/other:pull", Some(("bob", "bob-pw"))).await);
    let other = format!("{}/v2/team/other/blobs/{digest}", edge.url());
    let r = get_with(&other, &bob).await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "BLOB_UNKNOWN"));
    assert_eq!(origin.count("HEAD", &format!("/v2/team/other/blobs/{digest}")), 1, "the upstream was asked");
    let r = client::request(Method::HEAD, &other, &[("authorization", &bob)]).await;
    assert_eq!(r.status, 404, "HEAD of the cached blob is refused too");

    // Once team/copy holds it, the cached bytes are served there after one confirmation.
    origin.put_blob("team/copy", body.clone());
    let copy = format!("{}/v2/team/copy/blobs/{digest}", edge.url());
    let edge_token = bearer(&token(&edge, "repository:docker.io/team/copy:pull", Some(("edge", "edge-pw"))).await);
    for _ in 0..2 {
        let r = get_with(&copy, &edge_token).await;
        assert_eq!((r.status, r.header("x-berth-cache")), (200, Some("hit")));
        assert!(r.bytes().as_ref() == body.as_slice());
    }
    assert_eq!(origin.count("HEAD", &format!("/v2/team/copy/blobs/{digest}")), 1, "confirmed once, then cached");
    assert_eq!(origin.count("GET", &format!("/v2/team/copy/blobs/{digest}")), 0, "no second download");
}

#[tokio::test]
async fn a_manifest_by_digest_under_another_repository_needs_the_same_confirmation() {
    let (origin, edge, _p, _k) = delegated("").await;
    let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
    let digest = origin.put_manifest("team/app", Some("v1"), "application/vnd.oci.image.manifest.v1+json", manifest);
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let alice = bearer(&token(&edge, "repository:docker.io/team/app:pull", Some(("alice", "alice-pw"))).await);
    let r = client::request(
        Method::GET,
        &format!("{}/v2/team/app/manifests/v1", edge.url()),
        &[("authorization", &alice), ("accept", accept)],
    )
    .await;
    assert_eq!(r.status, 200);
    let bob = bearer(&token(&edge, "repository:docker.io/team/other:pull", Some(("bob", "bob-pw"))).await);
    let url = format!("{}/v2/team/other/manifests/{digest}", edge.url());
    let r = client::request(Method::GET, &url, &[("authorization", &bob), ("accept", accept)]).await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let no_token =
        client::request(Method::GET, &format!("{}/v2/team/app/manifests/v1", edge.url()), &[("accept", accept)]).await;
    assert_eq!(no_token.status, 401, "a cached manifest needs a token too");
}

#[tokio::test]
async fn a_revoked_user_gets_no_new_token_once_authz_ttl_passed() {
    let (origin, edge, _p, _k) = delegated("[auth]\nauthz_ttl = \"300ms\"\n").await;
    let scope = "repository:docker.io/team/app:pull";
    bearer(&token(&edge, scope, Some(("alice", "alice-pw"))).await);
    origin.set_auth(Auth::Users(vec![User::new("edge", "edge-pw", &["team/app"])]));
    berth_tests::eventually_async("alice's access is revoked", Duration::from_secs(10), || async {
        token(&edge, scope, Some(("alice", "alice-pw"))).await.status == 401
    })
    .await;
}

#[tokio::test]
async fn htpasswd_users_pull_only_what_their_grants_name() {
    let origin = Origin::start().await;
    let a = origin.put_blob("team-a/app", vec![1u8; 100]);
    let b = origin.put_blob("team-b/app", vec![2u8; 100]);
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("users.htpasswd");
    berth_tests::write_htpasswd(&htpasswd, &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let log = dir.path().join("access.log");
    let log_path = log.display().to_string();
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.log.access = log_path;
        c.upstream[0].access = Some(AccessMode::Htpasswd);
        c.upstream[0].htpasswd_file = Some(htpasswd.clone());
        c.upstream[0].grants.insert("alice".into(), vec!["team-a/**".into()]);
        c.upstream[0].grants.insert("bob".into(), vec!["team-b/*".into()]);
    });
    let scopes = "repository:docker.io/team-a/app:pull repository:docker.io/team-b/app:pull";
    let alice = bearer(&token(&edge, scopes, Some(("alice", "alice-pw"))).await);
    let url = |repo: &str, d: &berth_shared::Digest| format!("{}/v2/{repo}/blobs/{d}", edge.url());
    assert_eq!(get_with(&url("team-a/app", &a), &alice).await.status, 200);
    assert_eq!(get_with(&url("team-b/app", &b), &alice).await.status, 401, "not granted to alice");
    let bob = bearer(&token(&edge, scopes, Some(("bob", "bob-pw"))).await);
    assert_eq!(get_with(&url("team-b/app", &b), &bob).await.status, 200);
    assert_eq!(get_with(&url("team-a/app", &a), &bob).await.status, 401);
    assert_eq!(token(&edge, scopes, Some(("bob", "alice-pw"))).await.status, 401, "wrong password");
    assert_eq!(token(&edge, scopes, Some(("mallory", "x"))).await.status, 401, "unknown user");
    assert_eq!(token(&edge, "", Some(("alice", "alice-pw"))).await.status, 200, "a login without scope");
    assert_eq!(token(&edge, "", Some(("alice", "nope"))).await.status, 401);
    berth_tests::eventually("the access log names the user", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).unwrap_or_default().lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["user"] == "alice" && v["status"] == 200 && v["repository"] == "team-a/app"
        })
    })
    .await;
}

#[tokio::test]
async fn a_public_upstream_beside_a_protected_one_needs_no_credentials() {
    let private = Origin::start().await;
    private.set_auth(Auth::Users(vec![User::new("edge", "edge-pw", &["team/app"])]));
    let public = Origin::start().await;
    let digest = public.put_blob("library/alpine", vec![3u8; 300]);
    let password = berth_tests::secret_file("edge-pw");
    let edge = edge::start_custom(&[("docker.io", &public.url()), ("private.test", &private.url())], "", |c| {
        c.upstream[1].username = Some("edge".into());
        c.upstream[1].password_file = Some(password.to_path_buf());
    });
    let r = client::get(&format!("{}/v2/library/alpine/blobs/{digest}", edge.url())).await;
    assert_eq!(r.status, 200, "the anonymous upstream serves without a token");
    let r = client::get(&format!("{}/v2/private.test/team/app/blobs/{digest}", edge.url())).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().contains("scope=\"repository:private.test/team/app:pull\""));
}

#[test]
fn credentials_with_anonymous_access_refuse_to_start_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let text = |extra: &str| {
        format!(
            "[cache]\ndir = {:?}\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ndefault = true\nusername = \"u\"\npassword_env = \"PATH\"\naccess = \"anonymous\"\n{extra}",
            dir.path().display().to_string()
        )
    };
    let err = berth_edge::config::parse(&text("")).unwrap_err().to_string();
    assert!(err.contains("upstream[0].access") && err.contains("allow_anonymous_with_credentials"), "{err}");
    assert!(berth_edge::config::parse(&text("allow_anonymous_with_credentials = true\n")).is_ok());
    let err = berth_edge::config::parse(&text("").replace("\"anonymous\"", "\"htpasswd\"")).unwrap_err().to_string();
    assert!(err.contains("upstream[0].htpasswd_file"), "{err}");
    let weak = dir.path().join("weak.htpasswd");
    std::fs::write(&weak, "bob:$apr1$abc$def\n").unwrap();
    let htpasswd =
        text(&format!("htpasswd_file = {:?}\n", weak.display().to_string())).replace("\"anonymous\"", "\"htpasswd\"");
    let err = berth_edge::config::parse(&htpasswd).unwrap_err().to_string();
    assert!(err.contains("only bcrypt"), "{err}");
    let short = text("[auth]\nsigning_key_env = \"BERTH_TEST_SHORT_KEY_UNSET\"\n");
    let err = berth_edge::config::parse(&short).unwrap_err().to_string();
    assert!(err.contains("auth.signing_key_env"), "{err}");
}

#[tokio::test]
async fn a_cached_private_blob_stays_served_while_the_upstream_cannot_confirm_but_only_where_it_was_confirmed() {
    let (origin, edge, _p, _k) = delegated("[auth]\nauthz_ttl = \"100ms\"\n").await;
    let body = vec![4u8; 3000];
    let digest = origin.put_blob("team/app", body.clone());
    origin.put_blob("team/copy", body.clone());
    let all = bearer(
        &token(
            &edge,
            "repository:docker.io/team/app:pull repository:docker.io/team/copy:pull",
            Some(("edge", "edge-pw")),
        )
        .await,
    );
    let app = format!("/v2/team/app/blobs/{digest}");
    assert_eq!(get_with(&format!("{}{app}", edge.url()), &all).await.status, 200);
    edge.published(digest).await;

    // Once the fresh confirmation has aged out, the upstream fails the re-confirmation: the
    // confirmation of the last day keeps the cached blob served.
    origin.fault(&app, berth_tests::origin::Fault::Status(503));
    berth_tests::eventually_async("a re-confirmation was asked", Duration::from_secs(10), || async {
        let r = get_with(&format!("{}{app}", edge.url()), &all).await;
        assert_eq!(r.status, 200, "served on the earlier confirmation");
        origin.count("HEAD", &app) >= 1
    })
    .await;

    // A repository never confirmed is not served while the upstream fails.
    let copy = format!("/v2/team/copy/blobs/{digest}");
    origin.fault(&copy, berth_tests::origin::Fault::Status(503));
    let r = get_with(&format!("{}{copy}", edge.url()), &all).await;
    assert_eq!((r.status, r.error_code().as_str()), (502, "UNAVAILABLE"));
}
