//! The HTTP endpoints: classification and detection (image bytes or multipart), the models,
//! health, readiness, metrics, and the page. Every error is JSON: `{"error": "..."}`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use image::RgbImage;
use mobilenet::classify::{top_k, Prediction};
use mobilenet::detect::NmsConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::batch::{Refused, Work};
use super::{AppState, Kind, Model};

/// An error answer: a status and a message, as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn busy(refused: Refused) -> ApiError {
        match refused {
            Refused::Full => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "the model's queue is full: retry later",
            ),
            Refused::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ),
        }
    }
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorJson {
                error: &self.message,
            }),
        )
            .into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The query of `/v1/classify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyQuery {
    top: Option<usize>,
    model: Option<String>,
}

/// The query of `/v1/detect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectQuery {
    model: Option<String>,
    min_score: Option<f32>,
    iou: Option<f32>,
    max_detections: Option<usize>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad(format!("bad query: {}", e.body_text())))
}

/// The model a request names (or the first of the kind it needs).
fn pick<'a>(state: &'a AppState, name: Option<&str>, detector: bool) -> ApiResult<&'a Model> {
    let (want, other, endpoint) = if detector {
        ("detector", "/v1/classify", "/v1/detect")
    } else {
        ("classifier", "/v1/detect", "/v1/classify")
    };
    let is_kind = |m: &Model| matches!(m.kind, Kind::Detector(_)) == detector;
    let model = match name {
        Some(name) => state
            .models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = state.models.iter().map(|m| m.name.as_str()).collect();
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("unknown model {name:?}; loaded: {}", names.join(", ")),
                )
            })?,
        None => state
            .models
            .iter()
            .find(|m| is_kind(m))
            .ok_or_else(|| ApiError::bad(format!("no {want} is loaded: POST to {other}")))?,
    };
    if !is_kind(model) {
        return Err(ApiError::bad(format!(
            "model {:?} is not a {want} ({endpoint}); POST it to {other}",
            model.name
        )));
    }
    Ok(model)
}

/// The images of a request: its body, or each file of a multipart form (`true`).
async fn images(state: &AppState, req: Request) -> ApiResult<(Vec<(String, Bytes)>, bool)> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than {} bytes (--max-body-bytes)",
                state.limits.max_body
            ),
        )
    };
    if !multipart {
        let body = Bytes::from_request(req, &()).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::bad(format!("cannot read the body: {}", e.body_text()))
            }
        })?;
        if body.is_empty() {
            return Err(ApiError::bad(
                "empty body: send an image (JPEG, PNG, BMP, WebP), or multipart form data with images",
            ));
        }
        return Ok((vec![("body".into(), body)], false));
    }
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad(format!("bad multipart body: {}", e.body_text())))?;
    let mut parts = Vec::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(e) => {
                return Err(ApiError::bad(format!(
                    "bad multipart body: {}",
                    e.body_text()
                )))
            }
        };
        let name = field
            .file_name()
            .or(field.name())
            .unwrap_or("image")
            .to_string();
        let bytes = field.bytes().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::bad(format!("bad multipart body: {}", e.body_text()))
            }
        })?;
        if parts.len() == state.limits.max_images {
            return Err(ApiError::bad(format!(
                "more than {} images in one request",
                state.limits.max_images
            )));
        }
        parts.push((name, bytes));
    }
    if parts.is_empty() {
        return Err(ApiError::bad("the multipart form holds no image"));
    }
    Ok((parts, true))
}

/// Reserves `bytes` of the server's in-flight memory budget for as long as the permit lives,
/// or refuses at once (503) when the budget is spent: bodies being read and decoded images
/// waiting for the engine never exceed `--max-inflight-mb`.
fn reserve(state: &AppState, bytes: usize) -> ApiResult<tokio::sync::SemaphorePermit<'_>> {
    let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    if u64::from(kib) > state.limits.max_inflight_mb * 1024 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "this request needs {:.1} MB in memory, more than the server's budget ({} MB, --max-inflight-mb)",
                bytes as f64 / 1e6,
                state.limits.max_inflight_mb
            ),
        ));
    }
    state.memory.try_acquire_many(kib).map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server holds its in-flight memory budget ({} MB, --max-inflight-mb): retry later",
                state.limits.max_inflight_mb
            ),
        )
    })
}

/// The memory a request's body may take: its Content-Length, or the body limit.
fn body_bytes(state: &AppState, req: &Request) -> usize {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(state.limits.max_body)
        .min(state.limits.max_body)
}

/// Decodes an image on the decoding pool (at most `--decode-threads` at once).
async fn decode(state: &AppState, name: String, bytes: Bytes) -> ApiResult<RgbImage> {
    let _permit = state
        .decode
        .acquire()
        .await
        .map_err(|_| ApiError::busy(Refused::Closed))?;
    tokio::task::spawn_blocking(move || {
        mobilenet::preprocess::decode_image(&bytes, Path::new(&name))
            .map_err(|e| ApiError::bad(e.to_string()))
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "decoding failed"))?
}

#[derive(Serialize)]
struct ClassifyJson {
    model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    top: Vec<Prediction>,
    ms: f64,
}

pub async fn classify(
    State(state): State<Arc<AppState>>,
    q: Result<Query<ClassifyQuery>, QueryRejection>,
    req: Request,
) -> Response {
    let started = Instant::now();
    within_limit(&state, classify_images(&state, q, req, started)).await
}

/// A request's work within `--timeout-ms`, its error as a JSON answer.
async fn within_limit(
    state: &AppState,
    work: impl std::future::Future<Output = ApiResult<Response>>,
) -> Response {
    match tokio::time::timeout(state.limits.timeout, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => e.into_response(),
        Err(_) => timed_out(state),
    }
}

/// The answer to a request: one object per image (an array for a multipart form, else the one
/// object), each with the request's time so far.
fn respond<T: Serialize>(
    mut answers: Vec<T>,
    multipart: bool,
    started: Instant,
    set_ms: fn(&mut T, f64),
) -> Response {
    let ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
    for a in &mut answers {
        set_ms(a, ms);
    }
    if multipart || answers.len() != 1 {
        Json(answers).into_response()
    } else {
        Json(answers.remove(0)).into_response()
    }
}

fn timed_out(state: &AppState) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "no answer within {} ms (--timeout-ms): the server is overloaded",
            state.limits.timeout.as_millis()
        ),
    )
    .into_response()
}

async fn classify_images(
    state: &AppState,
    q: Result<Query<ClassifyQuery>, QueryRejection>,
    req: Request,
    started: Instant,
) -> ApiResult<Response> {
    let q = query(q)?;
    let model = pick(state, q.model.as_deref(), false)?;
    let Kind::Classifier(classifier) = &model.kind else {
        return Err(ApiError::bad("not a classifier"));
    };
    let classes = classifier.classes().unwrap_or(0);
    let top = match q.top {
        Some(0) => return Err(ApiError::bad("top=0 returns nothing: give at least 1")),
        Some(k) => k.min(classes),
        None => 5.min(classes),
    };
    let _body = reserve(state, body_bytes(state, &req))?;
    let (parts, multipart) = images(state, req).await?;
    // Decode every image first (a bad one fails the request before any engine work).
    let mut decoded = Vec::with_capacity(parts.len());
    for (name, bytes) in parts {
        let img = decode(state, name.clone(), bytes).await?;
        decoded.push((name, classifier.pixels(&img)));
    }
    let _work = reserve(state, decoded.iter().map(|d| d.1.len()).sum())?;
    let mut pending = Vec::with_capacity(decoded.len());
    let mut names = Vec::with_capacity(decoded.len());
    for (name, pixels) in decoded {
        let (tx, rx) = oneshot::channel();
        model
            .queue
            .submit(Work::Classify { pixels, reply: tx })
            .map_err(ApiError::busy)?;
        pending.push(rx);
        names.push(name);
    }
    let mut answers = Vec::with_capacity(pending.len());
    for (rx, name) in pending.into_iter().zip(names) {
        let probs = rx
            .await
            .map_err(|_| ApiError::busy(Refused::Closed))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        answers.push(ClassifyJson {
            model: model.name.clone(),
            image: multipart.then_some(name),
            top: top_k(&probs, top, classifier.labels()),
            ms: 0.0,
        });
    }
    Ok(respond(answers, multipart, started, |a, ms| a.ms = ms))
}

#[derive(Serialize)]
struct DetectionJson {
    class: usize,
    label: String,
    score: f32,
    #[serde(rename = "box")]
    bbox: [f64; 4],
}

#[derive(Serialize)]
struct DetectJson {
    model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    width: usize,
    height: usize,
    detections: Vec<DetectionJson>,
    ms: f64,
}

pub async fn detect(
    State(state): State<Arc<AppState>>,
    q: Result<Query<DetectQuery>, QueryRejection>,
    req: Request,
) -> Response {
    let started = Instant::now();
    within_limit(&state, detect_images(&state, q, req, started)).await
}

async fn detect_images(
    state: &AppState,
    q: Result<Query<DetectQuery>, QueryRejection>,
    req: Request,
    started: Instant,
) -> ApiResult<Response> {
    let q = query(q)?;
    let model = pick(state, q.model.as_deref(), true)?;
    let Kind::Detector(detector) = &model.kind else {
        return Err(ApiError::bad("not a detector"));
    };
    let config = detector.config();
    let nms = NmsConfig {
        min_score: q.min_score.unwrap_or(config.nms.min_score),
        iou: q.iou.unwrap_or(config.nms.iou),
        max_detections: q.max_detections.unwrap_or(config.nms.max_detections),
    };
    nms.check(["min_score", "iou", "max_detections"])
        .map_err(ApiError::bad)?;
    let _body = reserve(state, body_bytes(state, &req))?;
    let (parts, multipart) = images(state, req).await?;
    let mut decoded = Vec::with_capacity(parts.len());
    for (name, bytes) in parts {
        decoded.push((name.clone(), decode(state, name, bytes).await?));
    }
    let _work = reserve(state, decoded.iter().map(|d| d.1.as_raw().len()).sum())?;
    let mut pending = Vec::with_capacity(decoded.len());
    for (name, image) in decoded {
        let (tx, rx) = oneshot::channel();
        model
            .queue
            .submit(Work::Detect {
                image,
                nms,
                reply: tx,
            })
            .map_err(ApiError::busy)?;
        pending.push((rx, name));
    }
    let mut answers = Vec::with_capacity(pending.len());
    for (rx, name) in pending {
        let (found, frame) = rx
            .await
            .map_err(|_| ApiError::busy(Refused::Closed))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let detections = found
            .iter()
            .map(|d| DetectionJson {
                class: d.class,
                label: config
                    .labels
                    .get(d.class - 1)
                    .cloned()
                    .unwrap_or_else(|| format!("class {}", d.class)),
                score: (d.score * 1e4).round() / 1e4,
                bbox: frame.to_pixels(d.bbox).map(|v| (v * 10.0).round() / 10.0),
            })
            .collect();
        answers.push(DetectJson {
            model: model.name.clone(),
            image: multipart.then_some(name),
            width: frame.width,
            height: frame.height,
            detections,
            ms: 0.0,
        });
    }
    Ok(respond(answers, multipart, started, |a, ms| a.ms = ms))
}

pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let list: Vec<&serde_json::Value> = state.models.iter().map(|m| &m.describe).collect();
    Json(serde_json::json!({ "models": list })).into_response()
}

pub async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        Json(serde_json::json!({ "ready": true })).into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down").into_response()
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let queues: Vec<(String, usize, usize)> = state
        .models
        .iter()
        .map(|m| (m.name.clone(), m.queue.depth(), m.queue.capacity()))
        .collect();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(&queues),
    )
        .into_response()
}

pub async fn page() -> Response {
    Html(include_str!("page.html")).into_response()
}

pub async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint: POST /v1/classify or /v1/detect; GET /v1/models, /healthz, /readyz, /metrics, /, /web/",
    )
    .into_response()
}

pub async fn wrong_method() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "wrong method: POST images to /v1/classify and /v1/detect; GET the others",
    )
    .into_response()
}
