//! Headless Debian `chromium` driven through `chromedriver`: the W3C WebDriver protocol,
//! spoken over plain HTTP with the tests' own client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::request;

/// A program on `PATH`.
pub fn find(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// One headless browser session; the browser and chromedriver end when it is dropped, and
/// the browser's profile folder (tens of MB, which chromedriver's own temporary ones left
/// behind in /tmp on every run) is removed.
pub struct Browser {
    driver: Child,
    addr: String,
    session: String,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = request(&self.addr, "DELETE", &path, None, b"");
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// Starts chromium through chromedriver; `None` (with the reason printed) where either
    /// is missing, which fails the calling test when `CI=true` (`.ci/run` installs both).
    pub fn start(test: &str) -> Option<Browser> {
        let (Some(chromium), Some(chromedriver)) = (find("chromium"), find("chromedriver")) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs chromium and chromedriver (apt-get install chromium chromium-driver)"
            );
            eprintln!("skipping {test}: no chromium/chromedriver");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = format!("127.0.0.1:{port}");
        let profile = std::env::temp_dir().join(format!(
            "mobilenet-browser-{test}-{}-{port}",
            std::process::id()
        ));
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            profile,
        };
        let user_data = format!("--user-data-dir={}", browser.profile.display());
        browser.session = browser.command(
            "POST",
            "/session",
            serde_json::json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1200,800",
                             user_data]
                },
                "timeouts": { "script": 600_000 }
            }}}),
        )["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        Some(browser)
    }

    /// A WebDriver command on the server (`path` absolute) or on this session (`path`
    /// relative, e.g. `url`); the answer's `value`.
    pub fn command(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let path = match path.strip_prefix('/') {
            Some(_) => path.to_string(),
            None => format!("/session/{}/{path}", self.session),
        };
        let body = match method {
            "GET" | "DELETE" => Vec::new(),
            _ => body.to_string().into_bytes(),
        };
        let r = request(&self.addr, method, &path, Some("application/json"), &body);
        let v = r.json();
        assert!(
            r.status == 200,
            "WebDriver {method} {path}: {} {}",
            r.status,
            v
        );
        v["value"].clone()
    }

    /// Opens `url`.
    pub fn open(&self, url: &str) {
        self.command("POST", "url", serde_json::json!({ "url": url }));
    }

    /// Runs `script` (a function body) with `args`; its return value.
    pub fn run(&self, script: &str, args: serde_json::Value) -> serde_json::Value {
        self.command(
            "POST",
            "execute/sync",
            serde_json::json!({ "script": script, "args": args }),
        )
    }

    /// Runs `script`, an async function body given `args` as `arguments`; what its promise
    /// resolves to (a rejection comes back as `{"rejected": message}`).
    pub fn run_async(&self, script: &str, args: serde_json::Value) -> serde_json::Value {
        let wrapped = format!(
            "const done = arguments[arguments.length - 1];\n\
             (async function() {{ {script} }}).apply(null, Array.from(arguments).slice(0, -1))\n\
             .then(done, e => done({{ rejected: String(e && e.message || e) }}));"
        );
        self.command(
            "POST",
            "execute/async",
            serde_json::json!({ "script": wrapped, "args": args }),
        )
    }

    /// Runs `script` until it returns something other than null; panics after `limit`.
    pub fn wait_for(&self, script: &str, limit: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let v = self.run(script, serde_json::json!([]));
            if !v.is_null() {
                return v;
            }
            assert!(start.elapsed() < limit, "timed out waiting for {script}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `path` into the file input matching `selector` (unhiding it first).
    pub fn pick_file(&self, selector: &str, path: &Path) {
        self.run(
            "document.querySelector(arguments[0]).hidden = false;",
            serde_json::json!([selector]),
        );
        let input = self.command(
            "POST",
            "element",
            serde_json::json!({ "using": "css selector", "value": selector }),
        );
        let element = input
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .expect("an element")
            .to_string();
        self.command(
            "POST",
            &format!("element/{element}/value"),
            // chromedriver takes only canonical paths.
            serde_json::json!({ "text": path.canonicalize().expect("the file exists") }),
        );
    }

    /// A screenshot of the page saved as `out`, checked to be a PNG at least `min_width`
    /// wide.
    pub fn screenshot(&self, out: &Path, min_width: u32) {
        let shot = self.command("GET", "screenshot", serde_json::Value::Null);
        let png_bytes = base64_decode(shot.as_str().expect("base64 PNG"));
        std::fs::write(out, &png_bytes).expect("should succeed");
        let img = image::load_from_memory(&png_bytes).expect("a PNG screenshot");
        assert!(
            img.width() >= min_width,
            "screenshot {}×{}",
            img.width(),
            img.height()
        );
        eprintln!("screenshot: {}", out.display());
    }
}

/// Standard base64 (WebDriver's screenshots).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}
