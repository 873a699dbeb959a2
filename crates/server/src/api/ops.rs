//! Operations: readiness and metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use confab_protocol::ErrorCode;
use tokio::sync::Mutex;

use crate::error::Error;
use crate::state::App;

/// How long one readiness answer is reused. The check commits a write; `/readyz` needs no
/// token, so without this a flood of probes would be a flood of fsyncs. Orchestrators probe
/// every few seconds: they always get a fresh answer.
const READY_REUSE: Duration = Duration::from_secs(1);

/// The last readiness answer, shared by concurrent probes: while one check runs the others
/// wait for it instead of starting their own.
#[derive(Default)]
pub(super) struct Readiness {
    last: Mutex<Option<(Instant, Vec<String>)>>,
}

impl Readiness {
    async fn problems(&self, app: &App) -> Vec<String> {
        let mut last = self.last.lock().await;
        if let Some((at, problems)) = last.as_ref()
            && at.elapsed() < READY_REUSE
        {
            return problems.clone();
        }
        let problems = check(app).await;
        *last = Some((Instant::now(), problems.clone()));
        problems
    }
}

/// What keeps this node from serving: each backend must answer, and the store must commit.
async fn check(app: &App) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = app.store.check().await {
        problems.push(format!("store: {e}"));
    }
    if let Err(e) = app.sync.check().await {
        problems.push(format!("queue: {e}"));
    }
    if let Err(e) = app.presence.check().await {
        problems.push(format!("presence: {e}"));
    }
    if app.shutdown.is_cancelled() {
        problems.push("shutting down".into());
    }
    if let Err(e) = app.ids.check() {
        problems.push(format!("sequencer: {e}"));
    }
    problems
}

pub(super) async fn ready(app: Arc<App>, readiness: Arc<Readiness>) -> Response {
    let problems = readiness.problems(&app).await;
    if problems.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        // The causes are the operator's to see: the probe is how they find out.
        Error::Client {
            code: ErrorCode::Unavailable,
            message: problems.join("; "),
        }
        .into_response()
    }
}

pub(super) async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
