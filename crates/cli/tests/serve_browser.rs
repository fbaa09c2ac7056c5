//! The page of `mobilenet serve` in a real browser: Debian's chromium driven through
//! chromedriver (the W3C WebDriver protocol, spoken over plain HTTP), an image picked in the
//! page, the label the server answered shown, and a screenshot saved for a person to look at
//! (`target/serve-page.png`).
//!
//! Skips with a printed reason where chromium or chromedriver is missing, and fails when
//! `CI=true` (`.ci/run` installs both).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{png, request, s, Server};
use mobilenet::{MobileNetConfig, ModelFile};

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    addr: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// A WebDriver command; the answer's `value`.
fn wd(driver: &Driver, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let body = if method == "GET" || method == "DELETE" {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let r = request(&driver.addr, method, path, Some("application/json"), &body);
    let v = r.json();
    assert!(
        r.status == 200,
        "WebDriver {method} {path}: {} {}",
        r.status,
        v
    );
    v["value"].clone()
}

/// Runs `script` in the page until it returns something other than null, or panics after
/// `limit`.
fn wait_for(driver: &Driver, session: &str, script: &str, limit: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let v = wd(
            driver,
            "POST",
            &format!("/session/{session}/execute/sync"),
            serde_json::json!({ "script": script, "args": [] }),
        );
        if !v.is_null() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {script}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_page_shows_the_label_of_a_picked_image() {
    let (Some(chromium), Some(chromedriver)) = (find("chromium"), find("chromedriver")) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs chromium and chromedriver (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipping the_page_shows_the_label_of_a_picked_image: no chromium/chromedriver");
        return;
    };
    let dir = std::env::temp_dir().join(format!("mobilenet-serve-page-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("should succeed");
    let config = MobileNetConfig::new(0.25, 96)
        .expect("should succeed")
        .with_classes(3)
        .expect("should succeed");
    let mut file = ModelFile::random(config, 11);
    file.labels = Some(
        ["anemone", "barnacle", "cuttlefish"]
            .map(String::from)
            .to_vec(),
    );
    let model = dir.join("sea.safetensors");
    file.save(&model).expect("should succeed");
    let image = dir.join("picked.png");
    std::fs::write(&image, png(4, 160, 120)).expect("should succeed");
    let server = Server::start(&["--model", s(&model), "--threads", "1"]);
    // What the server says for the image (the page must show the same label).
    let want = request(
        &server.addr,
        "POST",
        "/v1/classify",
        Some("image/png"),
        &png(4, 160, 120),
    )
    .json()["top"][0]["label"]
        .as_str()
        .expect("a label")
        .to_string();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let driver = Driver {
        child: Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
        addr: format!("127.0.0.1:{port}"),
    };
    let start = Instant::now();
    while std::net::TcpStream::connect(&driver.addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let session = wd(
        &driver,
        "POST",
        "/session",
        serde_json::json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1200,800"]
            }
        }}}),
    )["sessionId"]
        .as_str()
        .expect("a session")
        .to_string();
    wd(
        &driver,
        "POST",
        &format!("/session/{session}/url"),
        serde_json::json!({ "url": format!("http://{}/", server.addr) }),
    );
    let loaded = wait_for(
        &driver,
        &session,
        "const o = document.querySelector('#model option'); return o ? o.value : null;",
        Duration::from_secs(20),
    );
    assert_eq!(loaded, "sea");
    // Pick the image through the file input, as a person would.
    wd(
        &driver,
        "POST",
        &format!("/session/{session}/execute/sync"),
        serde_json::json!({ "script": "document.getElementById('file').hidden = false;", "args": [] }),
    );
    let input = wd(
        &driver,
        "POST",
        &format!("/session/{session}/element"),
        serde_json::json!({ "using": "css selector", "value": "#file" }),
    );
    let element = input
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(|v| v.as_str())
        .expect("an element")
        .to_string();
    wd(
        &driver,
        "POST",
        &format!("/session/{session}/element/{element}/value"),
        serde_json::json!({ "text": s(&image) }),
    );
    let shown = wait_for(
        &driver,
        &session,
        "const e = document.getElementById('top-label'); return e ? e.dataset.label : null;",
        Duration::from_secs(30),
    );
    assert_eq!(shown, want.as_str());
    let status = wait_for(
        &driver,
        &session,
        "return document.getElementById('status').textContent || null;",
        Duration::from_secs(5),
    );
    assert!(
        status
            .as_str()
            .is_some_and(|t| t.contains("ms on the server")),
        "{status}"
    );
    // A screenshot of the page with its answer, for a person to look at.
    let shot = wd(
        &driver,
        "GET",
        &format!("/session/{session}/screenshot"),
        serde_json::Value::Null,
    );
    let png_bytes = base64_decode(shot.as_str().expect("base64 PNG"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    std::fs::write(&out, &png_bytes).expect("should succeed");
    let img = image::load_from_memory(&png_bytes).expect("a PNG screenshot");
    assert!(
        img.width() >= 600,
        "screenshot {}×{}",
        img.width(),
        img.height()
    );
    eprintln!("screenshot: {}", out.display());
    wd(
        &driver,
        "DELETE",
        &format!("/session/{session}"),
        serde_json::Value::Null,
    );
    std::fs::remove_dir_all(&dir).ok();
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
