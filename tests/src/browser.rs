//! A real browser for the page tests: Debian's headless Chromium driven by chromedriver over the
//! W3C WebDriver protocol (plain HTTP + JSON on loopback). Chromedriver and the browsers it
//! starts run in their own process group, killed when the `Browser` is dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use http::Method;
use serde_json::{json, Value};

use crate::client;

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    /// Starts chromedriver on a port it picks and opens a headless Chromium session whose
    /// profile lives under `dir`.
    pub async fn start(dir: &Path) -> Browser {
        for tool in ["chromium", "chromedriver"] {
            assert!(crate::tools::have(tool), "{tool} is required (apt-get install chromium chromium-driver)");
        }
        let mut command = Command::new("chromedriver");
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut driver =
            command.arg("--port=0").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("chromedriver runs");
        let port = crate::tools::follow_output(&mut driver, &dir.join("chromedriver.log"), |line| {
            line.split("started successfully on port ").nth(1).and_then(|p| p.trim_end_matches('.').parse::<u16>().ok())
        })
        .expect("chromedriver reports its port");
        let base = format!("http://127.0.0.1:{port}");
        let profile = dir.join("chromium-profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1600,1000", "--no-first-run", "--disable-extensions",
                         format!("--user-data-dir={}", profile.display())],
            }
        }}});
        let r = client::send(
            Method::POST,
            &format!("{base}/session"),
            &[("content-type", "application/json")],
            capabilities.to_string(),
        )
        .await;
        assert_eq!(r.status, 200, "new session: {}", String::from_utf8_lossy(r.bytes()));
        let session = r.json()["value"]["sessionId"].as_str().expect("a session id").to_owned();
        Browser { driver, base, session }
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let r = client::send(method, &url, &[("content-type", "application/json")], body.to_string()).await;
        assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(r.bytes()));
        r.json()["value"].clone()
    }

    /// Navigates and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.call(Method::POST, "/url", json!({"url": url})).await;
    }

    pub async fn current_url(&self) -> String {
        self.call(Method::GET, "/url", json!({})).await.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page; its return value.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.call(Method::POST, "/execute/sync", json!({"script": script, "args": args})).await
    }

    /// The text of the first element matching `css` (None when there is none).
    pub async fn text(&self, css: &str) -> Option<String> {
        let v = self
            .script("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", json!([css]))
            .await;
        v.as_str().map(str::to_owned)
    }

    /// Types `text` into the element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(Method::POST, &format!("/element/{id}/value"), json!({"text": text})).await;
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(Method::POST, &format!("/element/{id}/click"), json!({})).await;
    }

    async fn element(&self, css: &str) -> String {
        let v = self.call(Method::POST, "/element", json!({"using": "css selector", "value": css})).await;
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_owned()
    }

    /// Writes a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let png = self.call(Method::GET, "/screenshot", json!({})).await;
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap_or_default()).expect("base64 PNG");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("artefact folder");
        }
        std::fs::write(path, bytes).expect("screenshot written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: killpg on the process group chromedriver leads (it and every browser it started).
        unsafe { libc::killpg(self.driver.id() as i32, libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}
