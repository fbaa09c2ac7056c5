//! The page of `mobilenet serve` in a real browser: Debian's chromium driven through
//! chromedriver (`common::browser`), an image picked in the page, the label the server
//! answered shown, and a screenshot saved for a person to look at (`serve-page.png` in
//! cargo's test temporary directory).
//!
//! Skips with a printed reason where chromium or chromedriver is missing, and fails when
//! `CI=true` (`.ci/run` installs both).

mod common;

use std::path::Path;
use std::time::Duration;

use common::browser::Browser;
use common::http::{png, request, s, Server};
use mobilenet::{MobileNetConfig, ModelFile};

#[test]
fn the_page_shows_the_label_of_a_picked_image() {
    let Some(browser) = Browser::start("the_page_shows_the_label_of_a_picked_image") else {
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

    browser.open(&format!("http://{}/", server.addr));
    let loaded = browser.wait_for(
        "const o = document.querySelector('#model option'); return o ? o.value : null;",
        Duration::from_secs(20),
    );
    assert_eq!(loaded, "sea");
    // Pick the image through the file input, as a person would.
    browser.pick_file("#file", &image);
    let shown = browser.wait_for(
        "const e = document.getElementById('top-label'); return e ? e.dataset.label : null;",
        Duration::from_secs(30),
    );
    assert_eq!(shown, want.as_str());
    let status = browser.wait_for(
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
    browser.screenshot(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png"),
        600,
    );
    std::fs::remove_dir_all(&dir).ok();
}
