//! `mobilenet serve`: an HTTP inference server over the classifiers and detectors of the
//! library, with dynamic batching (`batch.rs`), Prometheus metrics (`metrics.rs`), JSON errors
//! and limits (`http.rs`), and a page to try it in a browser (`page.html`).

mod batch;
mod http;
mod metrics;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use clap::Args;
use mobilenet::detect::{is_detector_file, AnyDetector};
use mobilenet::Classifier;
use tokio::sync::{oneshot, Semaphore};

use batch::{Queue, Settings, Work};
use metrics::Metrics;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Models to serve: model files, quantized .tflite files, detector files; each is named by
    /// its file name without extension (the `model` query parameter)
    #[arg(long, required = true, num_args = 1..)]
    model: Vec<PathBuf>,
    /// Class labels, one per line, for the classifiers without their own that have as many
    /// classes (Google's ImageNet files: imagenet_labels_1001.txt)
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Address to listen on (loopback by default; 0.0.0.0:PORT to serve the network)
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Most images per engine batch
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_batch: u32,
    /// Longest wait for more images once a batch has its first, in milliseconds
    #[arg(long, default_value_t = 2)]
    max_delay_ms: u64,
    /// Most requests waiting per model; beyond it requests get 429 with Retry-After
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    queue: u32,
    /// Engine threads (default: all cores); one batch runs at a time
    #[arg(long, default_value_t = 0, value_parser = crate::threads_arg)]
    threads: usize,
    /// Images decoded at once (decoding runs beside the engine)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    decode_threads: u32,
    /// Largest request body in bytes
    #[arg(long, default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Most images in one multipart request
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_images: u32,
    /// Memory that request bodies being read and decoded images waiting for the engine may
    /// hold at once, in MB; beyond it requests get 503 with Retry-After
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 22))]
    max_inflight_mb: u64,
    /// Longest a request may take, in milliseconds (then 503)
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Serve the browser package built by scripts/build_wasm.sh from this directory at
    /// /web/: a page that classifies with the served classifiers entirely in the browser
    #[arg(long, value_name = "DIR")]
    web: Option<PathBuf>,
    /// For the quantized classifiers: tflite (TFLite's fixed-point requantization, the bytes
    /// of its reference kernels) or xnnpack (XNNPACK's single-precision one: faster, the bytes
    /// of TFLite with its default XNNPACK delegate); float models are not affected
    #[arg(long, value_enum, default_value_t = crate::RequantArg::Tflite)]
    requant: crate::RequantArg,
    /// For the float classifiers and detectors: f32, or bf16 GEMMs (needs AVX512-BF16);
    /// quantized models are not affected
    #[arg(long, value_enum, default_value_t = crate::PrecisionArg::F32)]
    precision: crate::PrecisionArg,
}

/// What a loaded model runs on.
pub(crate) enum Kind {
    Classifier(Arc<dyn Classifier>),
    Detector(Arc<AnyDetector>),
}

/// A model the server answers for.
pub(crate) struct Model {
    name: String,
    /// The file it was loaded from.
    path: PathBuf,
    kind: Kind,
    queue: Queue,
    /// What `/v1/models` says of it.
    describe: serde_json::Value,
}

/// Request limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    max_body: usize,
    max_inflight_mb: u64,
    max_images: usize,
    timeout: Duration,
}

/// What every handler sees.
pub(crate) struct AppState {
    models: Vec<Model>,
    metrics: Arc<Metrics>,
    limits: Limits,
    decode: Semaphore,
    /// The in-flight memory budget, in KiB.
    memory: Semaphore,
    ready: AtomicBool,
    /// What `--web` serves.
    web: web::WebFiles,
}

impl Model {
    /// The name of the file it was loaded from.
    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map_or_else(|| self.name.clone(), |n| n.to_string_lossy().into_owned())
    }
}

/// A name for each model: its file stem, made unique.
fn names(paths: &[PathBuf]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        let stem = p
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned());
        let mut name = stem.clone();
        let mut k = 2;
        while out.contains(&name) {
            name = format!("{stem}-{k}");
            k += 1;
        }
        out.push(name);
    }
    out
}

fn describe_classifier(
    name: &str,
    path: &std::path::Path,
    c: &dyn Classifier,
) -> serde_json::Value {
    let r = c.resolution();
    serde_json::json!({
        "name": name,
        "kind": "classifier",
        "file": path.display().to_string(),
        "precision": c.precision(),
        // The kernels, and for a quantized model served with XNNPACK's requantization, that.
        "isa": c.isa(),
        "alpha": c.config().alpha(),
        "resolution": r,
        "input": [r, r, 3],
        "classes": c.classes(),
        "labels": c.labels().is_some(),
    })
}

fn describe_detector(name: &str, path: &std::path::Path, d: &AnyDetector) -> serde_json::Value {
    let c = d.config();
    serde_json::json!({
        "name": name,
        "kind": "detector",
        "file": path.display().to_string(),
        "precision": d.precision(),
        "alpha": c.alpha,
        "resolution": c.input,
        "input": [c.input, c.input, 3],
        "classes": c.labels.len(),
        "labels": c.labels,
    })
}

/// Counts every request in the metrics, by endpoint and status.
async fn record(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = match req.uri().path() {
        p @ ("/v1/classify" | "/v1/detect" | "/v1/models" | "/healthz" | "/readyz" | "/metrics"
        | "/") => p.to_string(),
        _ => "other".to_string(),
    };
    let started = Instant::now();
    let response = next.run(req).await;
    state
        .metrics
        .request(&endpoint, response.status().as_u16(), started.elapsed());
    response
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let settings = Settings {
        max_batch: args.max_batch as usize,
        max_delay: Duration::from_millis(args.max_delay_ms),
        threads: args.threads,
        queue: args.queue as usize,
    };
    if (args.max_inflight_mb as u128) << 20 < args.max_body_bytes as u128 {
        bail!(
            "--max-inflight-mb {} is less than one request body (--max-body-bytes {})",
            args.max_inflight_mb,
            args.max_body_bytes
        );
    }
    if let Some(dir) = &args.web {
        if !dir.join("mobilenet.js").is_file() || !dir.join("index.html").is_file() {
            bail!(
                "--web {0}: not a browser package (no mobilenet.js and index.html there); \
                 build one with scripts/build_wasm.sh {0}",
                dir.display()
            );
        }
    }
    let compute = Arc::new(Mutex::new(()));
    let metrics = Arc::new(Metrics::default());
    let labels = args
        .labels
        .as_deref()
        .map(mobilenet::import::read_labels)
        .transpose()?;
    let mut labelled = 0;
    let mut models = Vec::new();
    let mut workers = Vec::new();
    for (path, name) in args.model.iter().zip(names(&args.model)) {
        let (kind, describe, (queue, worker)) = if is_detector_file(path) {
            let mut d = AnyDetector::load(path)?;
            if matches!(d, AnyDetector::Float(_)) {
                d.set_precision(args.precision.into(), path)?;
            }
            let d = Arc::new(d);
            let describe = describe_detector(&name, path, &d);
            let q = batch::detector(
                Arc::clone(&d),
                settings,
                Arc::clone(&compute),
                Arc::clone(&metrics),
            );
            (Kind::Detector(d), describe, q)
        } else {
            let mut model = mobilenet::classifier::AnyModel::load(path)?;
            let mut c = if matches!(model, mobilenet::classifier::AnyModel::Quantized(_)) {
                model.set_requantization(args.requant.into(), path)?;
                model.into_classifier()?
            } else {
                model.into_classifier_at(args.precision.into(), path)?
            };
            let Some(classes) = c.classes() else {
                bail!("{}: the model has no classifier head", path.display());
            };
            if let Some(l) = labels.as_ref().filter(|l| l.len() == classes) {
                if c.labels().is_none() {
                    c.set_labels(l.clone())?;
                    labelled += 1;
                }
            }
            let c: Arc<dyn Classifier> = Arc::from(c);
            let describe = describe_classifier(&name, path, c.as_ref());
            let q = batch::classifier(
                Arc::clone(&c),
                settings,
                Arc::clone(&compute),
                Arc::clone(&metrics),
            );
            (Kind::Classifier(c), describe, q)
        };
        models.push(Model {
            name,
            path: path.clone(),
            kind,
            queue,
            describe,
        });
        workers.push(worker);
    }
    if let (Some(path), Some(l), 0) = (&args.labels, &labels, labelled) {
        bail!(
            "{}: {} labels, and no classifier without labels has {} classes",
            path.display(),
            l.len(),
            l.len()
        );
    }
    warm_up(&models)?;
    let state = Arc::new(AppState {
        models,
        metrics,
        limits: Limits {
            max_body: args.max_body_bytes,
            max_inflight_mb: args.max_inflight_mb,
            max_images: args.max_images as usize,
            timeout: Duration::from_millis(args.timeout_ms),
        },
        decode: Semaphore::new(args.decode_threads as usize),
        memory: Semaphore::new(args.max_inflight_mb as usize * 1024),
        ready: AtomicBool::new(true),
        web: web::WebFiles {
            dir: args.web.clone(),
            labels: args.labels.clone(),
        },
    });
    let app = Router::new()
        .route("/v1/classify", post(http::classify))
        .route("/v1/detect", post(http::detect))
        .route("/v1/models", get(http::models))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .route("/", get(http::page))
        .route(
            "/web",
            get(|| async { axum::response::Redirect::permanent("/web/") }),
        )
        .route("/web/", get(web::static_file))
        .route("/web/models/{name}", get(web::model_file))
        .route("/web/labels", get(web::labels))
        .route("/web/{*file}", get(web::static_file))
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::wrong_method)
        .layer(DefaultBodyLimit::max(args.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            record,
        ))
        .with_state(Arc::clone(&state));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(args.decode_threads as usize + 2)
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("cannot listen on {}", args.bind))?;
        let addr = listener.local_addr()?;
        // Answers go out at once (Nagle's algorithm against a client's delayed ACK costs 40 ms
        // a small response).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let names: Vec<&str> = state.models.iter().map(|m| m.name.as_str()).collect();
        println!("listening on http://{addr} (models: {})", names.join(", "));
        let shutdown_state = Arc::clone(&state);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                shutdown_state.ready.store(false, Ordering::Relaxed);
                eprintln!("shutting down: finishing the requests in flight");
            })
            .await
            .context("the server failed")
    })?;
    for m in &state.models {
        m.queue.close();
    }
    for w in workers {
        let _ = w.join();
    }
    eprintln!("stopped");
    Ok(())
}

/// One image through every model before the server takes requests (plans touched, buffers
/// allocated), so the first request does not pay for it.
fn warm_up(models: &[Model]) -> Result<()> {
    for m in models {
        let failed = |why: String| anyhow::anyhow!("warm-up of {}: {why}", m.name);
        let answered = match &m.kind {
            Kind::Classifier(c) => {
                let (tx, rx) = oneshot::channel();
                let pixels = vec![128; c.pixels_len()];
                m.queue
                    .submit(Work::Classify { pixels, reply: tx })
                    .map_err(|e| failed(format!("{e:?}")))?;
                rx.blocking_recv().map(|r| r.map(|_| ()))
            }
            Kind::Detector(d) => {
                let (tx, rx) = oneshot::channel();
                let work = Work::Detect {
                    image: image::RgbImage::new(64, 64),
                    nms: d.config().nms,
                    reply: tx,
                };
                m.queue.submit(work).map_err(|e| failed(format!("{e:?}")))?;
                rx.blocking_recv().map(|r| r.map(|_| ()))
            }
        };
        answered
            .map_err(|_| failed("no answer".into()))?
            .map_err(failed)?;
    }
    Ok(())
}
