//! Test harness for Berth: a scripted origin registry whose endpoints misbehave on purpose, an
//! HTTP client that reports cut-short bodies, in-process and real-binary edges, and wrappers
//! for Debian's `docker-registry` and `skopeo`, and real pull clients (podman, containerd,
//! Docker).

pub mod browser;
pub mod client;
pub mod clients;
pub mod edge;
pub mod fleet;
pub mod origin;
pub mod pki;
pub mod postgres;
pub mod registry;
pub mod token_server;
pub mod tools;

/// Waits until `cond` holds, polling on events of the runtime rather than sleeping blindly;
/// panics with `what` after `limit`.
pub async fn eventually<F: FnMut() -> bool>(what: &str, limit: std::time::Duration, mut cond: F) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Like [`eventually`], for a condition that has to await (a request, a handshake).
pub async fn eventually_async<F, Fut>(what: &str, limit: std::time::Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Where skipped tests are recorded: `BERTH_SKIP_LOG`, else `target/berth-skipped-tests.txt`
/// beside the test executables. `scripts/test` empties it first and prints it last.
pub fn skip_log() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("BERTH_SKIP_LOG") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test exe> → target/
    let target = exe.ancestors().nth(3).map(std::path::Path::to_path_buf).unwrap_or_default();
    target.join("berth-skipped-tests.txt")
}

/// Declares that `test` cannot run on this machine because of `why`. Under CI (`CI=true`) that is
/// a failure: CI must run everything. Elsewhere the skip is recorded in [`skip_log`], which the
/// suite prints as a summary at the end, so a skip is never silent.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run here, and CI=true forbids skipping it: {why}");
    }
    use std::io::Write;
    let line = format!("{test}: {why}\n");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(skip_log()) {
        let _ = f.write_all(line.as_bytes());
    }
    eprintln!("SKIPPED {line}");
}

/// Writes an htpasswd file of `(user, password)` pairs (bcrypt, low cost: tests only).
pub fn write_htpasswd(path: &std::path::Path, users: &[(&str, &str)]) {
    let lines: String = users.iter().map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).expect("bcrypt"))).collect();
    std::fs::write(path, lines).expect("write htpasswd");
}

/// A secret in a file of its own (for `password_file`, `token_file`, `*_tokens_file`), removed
/// when dropped: tests pass secrets explicitly, never through `std::env::set_var`.
pub fn secret_file(value: &str) -> tempfile::TempPath {
    let file = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(file.path(), value).expect("write secret");
    file.into_temp_path()
}
