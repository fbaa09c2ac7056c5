//! A load test for `mobilenet serve`: `--requests` POSTs of one image at each concurrency, on
//! persistent HTTP/1.1 connections (one per client thread), reporting throughput, p50/p99
//! latency and errors as one JSON line per concurrency. `scripts/serve_load.sh` runs it next
//! to `mobilenet bench` for the same model.
//!
//! `cargo run --release -p mobilenet-cli --example loadtest -- ADDR IMAGE [REQUESTS]
//! [CONCURRENCY,…] [PATH]`, e.g. `127.0.0.1:8080 photo.jpg 400 1,8,64 /v1/classify?top=1`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request on `stream`; the status, or an error.
fn post(stream: &mut TcpStream, host: &str, path: &str, body: &[u8]) -> std::io::Result<u16> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // One write: a request split over two segments waits for the server's delayed ACK.
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while raw.len() < split + 4 + length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        raw.extend_from_slice(&buf[..n]);
    }
    Ok(status)
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: loadtest ADDR IMAGE [REQUESTS] [CONCURRENCY,…] [PATH]".into());
    }
    let addr = args[1].clone();
    let image = Arc::new(std::fs::read(&args[2])?);
    let requests: usize = args.get(3).map_or(Ok(400), |s| s.parse())?;
    let levels: Vec<usize> = args
        .get(4)
        .map_or("1,8,64", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let path = Arc::new(args.get(5).cloned().unwrap_or("/v1/classify?top=1".into()));
    for &concurrency in &levels {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (addr, image, path, next) = (
                    addr.clone(),
                    Arc::clone(&image),
                    Arc::clone(&path),
                    Arc::clone(&next),
                );
                std::thread::spawn(move || {
                    let mut times = Vec::new();
                    let mut errors = 0usize;
                    let mut stream: Option<TcpStream> = None;
                    while next.fetch_add(1, Ordering::Relaxed) < requests {
                        let t = Instant::now();
                        if stream.is_none() {
                            stream = TcpStream::connect(&addr).ok();
                            if let Some(s) = &stream {
                                let _ = s.set_nodelay(true);
                            }
                        }
                        let ok = match stream.as_mut() {
                            Some(s) => matches!(post(s, &addr, &path, &image), Ok(200)),
                            None => false,
                        };
                        if ok {
                            times.push(t.elapsed());
                        } else {
                            errors += 1;
                            stream = None;
                        }
                    }
                    (times, errors)
                })
            })
            .collect();
        let mut times = Vec::new();
        let mut errors = 0;
        for w in workers {
            let (t, e) = w.join().map_err(|_| "a client thread panicked")?;
            times.extend(t);
            errors += e;
        }
        let wall = started.elapsed().as_secs_f64();
        times.sort();
        println!(
            "{{\"concurrency\":{concurrency},\"requests\":{requests},\"ok\":{},\"errors\":{errors},\"seconds\":{wall:.3},\"per_second\":{:.2},\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
            times.len(),
            times.len() as f64 / wall,
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
    }
    Ok(())
}
