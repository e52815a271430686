//! A small registry token server for Debian's `docker-registry` in token-auth mode: users with
//! passwords and per-repository rights, JWTs signed ES256 with a key whose self-signed
//! certificate is the registry's `rootcertbundle` (sent in the `x5c` header). What a real
//! private registry's token service does, minus everything else. Runs on its own thread, so
//! tests that block on a client process do not stall it.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

pub const ISSUER: &str = "berth-test-issuer";
pub const SERVICE: &str = "berth-test-registry";

/// A user: name, password, and the repositories with the actions allowed on each.
#[derive(Clone, Debug)]
pub struct TokenUser {
    pub name: String,
    pub password: String,
    /// (repository, actions), e.g. ("team/app", ["pull"]); repository "*" means every one.
    pub rights: Vec<(String, Vec<String>)>,
}

impl TokenUser {
    pub fn new(name: &str, password: &str, rights: &[(&str, &[&str])]) -> TokenUser {
        TokenUser {
            name: name.into(),
            password: password.into(),
            rights: rights
                .iter()
                .map(|(r, a)| ((*r).to_owned(), a.iter().map(|s| (*s).to_owned()).collect()))
                .collect(),
        }
    }
}

/// A running token server; stopped when dropped.
pub struct TokenServer {
    pub addr: SocketAddr,
    /// The signing certificate (PEM): the registry's `rootcertbundle`.
    pub cert: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    rng: ring::rand::SystemRandom,
}

impl TokenServer {
    pub fn start(dir: &Path, users: Vec<TokenUser>) -> TokenServer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("token key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("key");
        let key_pair = rcgen::KeyPair::try_from(pkcs8.as_ref()).expect("rcgen key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "berth test token signer");
        let cert = params.self_signed(&key_pair).expect("token certificate");
        std::fs::create_dir_all(dir).expect("token dir");
        let cert_path = dir.join("token-signer.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write signer cert");
        let signer = Arc::new(Signer { key, cert_der: cert.der().to_vec(), rng });

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (signer, users) = (Arc::clone(&signer), users.clone());
                        std::thread::spawn(move || serve(stream, &signer, &users));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        TokenServer { addr, cert: cert_path, stop, thread: Some(thread) }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The `auth:` section of a docker-registry config using this server.
    pub fn registry_auth_yaml(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm(),
            self.cert.display()
        )
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: TcpStream, signer: &Signer, users: &[TokenUser]) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_owned());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
    let (status, body) = answer(&target, authorization.as_deref(), signer, users);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

fn answer(target: &str, authorization: Option<&str>, signer: &Signer, users: &[TokenUser]) -> (&'static str, String) {
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|p| p.strip_prefix("scope="))
        .map(|s| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned())
        .collect();
    let user = match authorization.and_then(|a| a.strip_prefix("Basic ")) {
        None => None,
        Some(encoded) => {
            let decoded = STANDARD.decode(encoded).ok().and_then(|d| String::from_utf8(d).ok()).unwrap_or_default();
            match users.iter().find(|u| decoded == format!("{}:{}", u.name, u.password)) {
                Some(u) => Some(u),
                None => return ("401 Unauthorized", r#"{"details":"invalid credentials"}"#.into()),
            }
        }
    };
    let mut access = Vec::new();
    for scope in scopes.iter().flat_map(|s| s.split(' ')) {
        let Some(rest) = scope.strip_prefix("repository:") else { continue };
        let Some((name, actions)) = rest.rsplit_once(':') else { continue };
        let allowed: Vec<&str> = actions
            .split(',')
            .filter(|a| {
                user.is_some_and(|u| {
                    u.rights.iter().any(|(r, acts)| (r == name || r == "*") && acts.iter().any(|x| x == a))
                })
            })
            .collect();
        if !allowed.is_empty() {
            access.push(serde_json::json!({"type": "repository", "name": name, "actions": allowed}));
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": user.map(|u| u.name.as_str()).unwrap_or(""), "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", rand::random::<u64>()),
        "access": access,
    });
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&signer.cert_der)]});
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let Ok(signature) = signer.key.sign(&signer.rng, signing_input.as_bytes()) else {
        return ("500 Internal Server Error", "{}".into());
    };
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
    ("200 OK", serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string())
}
