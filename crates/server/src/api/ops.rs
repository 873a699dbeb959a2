//! Operations: readiness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::state::App;

pub(super) async fn ready(State(app): State<Arc<App>>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = app.store.check().await {
        problems.push(e.to_string());
    }
    if let Err(e) = app.sync.check().await {
        problems.push(e.to_string());
    }
    if let Err(e) = app.presence.check().await {
        problems.push(e.to_string());
    }
    if app.shutdown.is_cancelled() {
        problems.push("shutting down".into());
    }
    if let Err(e) = app.ids.check() {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n")).into_response()
    }
}

pub(super) async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
