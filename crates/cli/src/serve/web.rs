//! `--web DIR`: the browser package (`scripts/build_wasm.sh`'s output) under `/web/`, with the
//! served models' files under `/web/models/<name>` and the `--labels` file at
//! `/web/labels`, so that the in-page demo (`/web/`) classifies with the same model the server
//! runs, entirely in the browser.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::http::ApiError;
use super::AppState;

/// What `--web` serves besides the package: the models' files and the labels file.
#[derive(Debug, Default)]
pub(crate) struct WebFiles {
    /// The package directory, when `--web` was given.
    pub dir: Option<PathBuf>,
    /// `--labels`, when given.
    pub labels: Option<PathBuf>,
}

fn no_web() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no browser package: start the server with --web DIR (DIR from scripts/build_wasm.sh)",
    )
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        // The type streaming compilation (`WebAssembly.instantiateStreaming`) insists on.
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// The bytes of `path` as a response, or 404 when it is not a readable regular file.
async fn file(path: &Path, name: Option<&str>) -> Response {
    let is_file = tokio::fs::metadata(path).await.is_ok_and(|m| m.is_file());
    let bytes = match is_file {
        true => tokio::fs::read(path).await.ok(),
        false => None,
    };
    let Some(bytes) = bytes else {
        return ApiError::new(StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(path)),
        )],
        bytes,
    )
        .into_response();
    if let Some(value) = name.and_then(|n| HeaderValue::from_str(n).ok()) {
        response.headers_mut().insert("x-model-name", value);
    }
    response
}

/// `GET /web/` and `GET /web/<file>`: the package's files; only plain relative paths.
pub async fn static_file(
    State(state): State<Arc<AppState>>,
    rest: Option<UrlPath<String>>,
) -> Response {
    let Some(dir) = &state.web.dir else {
        return no_web().into_response();
    };
    let rest = rest.map_or_else(String::new, |UrlPath(p)| p);
    let rest = if rest.is_empty() || rest.ends_with('/') {
        format!("{rest}index.html")
    } else {
        rest
    };
    let relative = Path::new(&rest);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return ApiError::new(StatusCode::NOT_FOUND, "no such file").into_response();
    }
    file(&dir.join(relative), None).await
}

/// `GET /web/models/<name>`: the file a served model (classifier or detector) was loaded
/// from.
pub async fn model_file(
    State(state): State<Arc<AppState>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    if state.web.dir.is_none() {
        return no_web().into_response();
    }
    let found = state.models.iter().find(|m| m.name == name);
    match found {
        Some(m) => file(&m.path, Some(&m.file_name())).await,
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no model named '{name}' (GET /v1/models lists them)"),
        )
        .into_response(),
    }
}

/// `GET /web/labels`: the `--labels` file.
pub async fn labels(State(state): State<Arc<AppState>>) -> Response {
    match (&state.web.dir, &state.web.labels) {
        (None, _) => no_web().into_response(),
        (Some(_), Some(path)) => file(path, None).await,
        (Some(_), None) => ApiError::new(
            StatusCode::NOT_FOUND,
            "the server was started without --labels",
        )
        .into_response(),
    }
}
