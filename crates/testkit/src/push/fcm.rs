//! FCM for tests: Google's OAuth token endpoint (the JWT bearer grant of a service account it
//! makes) and FCM's HTTP v1 send endpoint, each checking requests as Google does and
//! answering with Google's error bodies.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use jwt_simple::prelude::{RS256KeyPair, RS256PublicKey, RSAPublicKeyLike, VerificationOptions};
use serde_json::{Map, Value, json};

use super::gateway::{Log, Server, answer, lock, read_body, retry_header, serve};

/// The scope an access token for sending needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The grant type of a service account's assertion.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google refuses an assertion valid for longer.
const MAX_ASSERTION_LIFETIME: u64 = 3600;
/// How long the access tokens this double issues say they last.
const ACCESS_TOKEN_SECONDS: u64 = 3599;
/// FCM refuses a message whose data (keys and values) is larger.
pub const MAX_DATA_BYTES: usize = 4096;
/// The path of the token endpoint on this double.
const TOKEN_PATH: &str = "/token";

/// FCM and its token endpoint on `127.0.0.1`: configure the server with
/// [`url`](FcmDouble::url) and [`credentials`](FcmDouble::credentials), a service account
/// JSON key file whose `token_uri` points at this double.
///
/// By default every request that passes the checks is answered 200.
pub struct FcmDouble {
    state: Arc<State>,
    server: Server,
    credentials: PathBuf,
    _dir: tempfile::TempDir,
}

/// One send request FCM received, and how it answered.
#[derive(Clone, Debug)]
pub struct FcmRequest {
    pub path: String,
    /// The `authorization` header.
    pub authorization: Option<String>,
    /// The body as JSON (`Null` if it was not JSON).
    pub body: Value,
    /// The status FCM answered.
    pub status: u16,
    /// The error's `status` and `errorCode` (e.g. `NOT_FOUND UNREGISTERED`), when not 200.
    pub error: Option<String>,
}

impl FcmRequest {
    /// The body's `message`.
    pub fn message(&self) -> &Value {
        &self.body["message"]
    }

    /// The registration token the message is for.
    pub fn token(&self) -> Option<&str> {
        self.message()["token"].as_str()
    }
}

/// One request to the token endpoint, and what it got.
#[derive(Clone, Debug)]
pub struct FcmGrant {
    pub status: u16,
    /// The access token issued.
    pub access_token: Option<String>,
    /// Why the grant was refused.
    pub error: Option<String>,
}

struct State {
    public_key: RS256PublicKey,
    project_id: String,
    client_email: String,
    token_uri: String,
    log: Log<FcmRequest>,
    grants: Log<FcmGrant>,
    revoked: Mutex<HashSet<String>>,
    script: Mutex<HashMap<String, VecDeque<u16>>>,
    retry_after: Mutex<Option<u64>>,
}

/// The service account's key. Made once per test process: an RSA key takes a while.
fn account_key() -> &'static RS256KeyPair {
    static KEY: OnceLock<RS256KeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        RS256KeyPair::generate(2048).unwrap_or_else(|e| panic!("cannot make an RSA key: {e}"))
    })
}

impl FcmDouble {
    /// Starts FCM and writes its service account's key file.
    pub async fn start() -> FcmDouble {
        let key = tokio::task::spawn_blocking(account_key)
            .await
            .unwrap_or_else(|e| panic!("cannot make an RSA key: {e}"));
        let (state, server) = {
            // The token endpoint's URL names the port, so the state is made once it is bound.
            let slot: Arc<OnceLock<Arc<State>>> = Arc::new(OnceLock::new());
            let handler = Arc::clone(&slot);
            let server = serve(false, move |request| {
                let state = handler.get().map(Arc::clone);
                async move {
                    match state {
                        Some(state) => state.handle(request).await,
                        None => answer(503, &[], "starting"),
                    }
                }
            })
            .await;
            let state = Arc::new(State {
                public_key: key.public_key(),
                project_id: "confab-test".into(),
                client_email: "push@confab-test.iam.gserviceaccount.com".into(),
                token_uri: format!("http://{}{TOKEN_PATH}", server.addr),
                log: Log::new(),
                grants: Log::new(),
                revoked: Mutex::default(),
                script: Mutex::default(),
                retry_after: Mutex::default(),
            });
            let _ = slot.set(Arc::clone(&state));
            (state, server)
        };
        let pem = key
            .to_pem()
            .unwrap_or_else(|e| panic!("cannot write the key as PEM: {e}"));
        let account = json!({
            "type": "service_account",
            "project_id": state.project_id,
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": state.client_email,
            "client_id": "1",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": state.token_uri,
        });
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("no temporary dir: {e}"));
        let credentials = dir.path().join("service-account.json");
        std::fs::write(&credentials, account.to_string())
            .unwrap_or_else(|e| panic!("cannot write the service account: {e}"));
        FcmDouble {
            state,
            server,
            credentials,
            _dir: dir,
        }
    }

    /// The endpoint (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The service account's JSON key file.
    pub fn credentials(&self) -> &Path {
        &self.credentials
    }

    pub fn project_id(&self) -> &str {
        &self.state.project_id
    }

    /// The statuses to answer the next sends to `token` with, in order (then 200), each with
    /// FCM's usual error (404 `UNREGISTERED`, 400 `INVALID_ARGUMENT`, 429 `QUOTA_EXCEEDED`,
    /// 503 `UNAVAILABLE`…).
    pub fn script(&self, token: &str, statuses: impl IntoIterator<Item = u16>) {
        lock(&self.state.script)
            .entry(token.to_owned())
            .or_default()
            .extend(statuses);
    }

    /// The `Retry-After` (seconds) sent with scripted 429 and 5xx answers.
    pub fn set_retry_after(&self, seconds: Option<u64>) {
        *lock(&self.state.retry_after) = seconds;
    }

    /// Every access token issued so far is refused from now on (401), as when one expires
    /// or is revoked early.
    pub fn revoke_access_tokens(&self) {
        let issued = self.grants().into_iter().filter_map(|g| g.access_token);
        lock(&self.state.revoked).extend(issued);
    }

    /// Every request to the token endpoint so far.
    pub fn grants(&self) -> Vec<FcmGrant> {
        self.state.grants.all()
    }

    /// Every send so far.
    pub fn received(&self) -> Vec<FcmRequest> {
        self.state.log.all()
    }

    /// Waits until `n` sends have come; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<FcmRequest> {
        self.state.log.wait_for(n, timeout, "FCM double").await
    }
}

/// FCM's error for a status: its `status` and the `errorCode` of its details.
fn usual_error(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        401 => ("UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"),
        403 => ("PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
        404 => ("NOT_FOUND", "UNREGISTERED"),
        429 => ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
        503 => ("UNAVAILABLE", "UNAVAILABLE"),
        _ => ("INTERNAL", "INTERNAL"),
    }
}

/// A refusal: the status, and the message of the error body.
type Refusal = (u16, String);

impl State {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        if request.method() != hyper::Method::POST {
            return answer(405, &[], "only POST");
        }
        if path == TOKEN_PATH {
            let body = read_body(request).await;
            return self.grant(&body);
        }
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_body(request).await;
        let mut record = FcmRequest {
            path: path.clone(),
            authorization,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            status: 200,
            error: None,
        };
        let checked = self.check(&record);
        let status = match checked {
            Err((status, _)) => status,
            Ok(()) => record
                .token()
                .and_then(|token| lock(&self.script).get_mut(token)?.pop_front())
                .unwrap_or(200),
        };
        record.status = status;
        let reply = if status == 200 {
            let name = format!("projects/{}/messages/{}", self.project_id, self.log.len());
            answer(200, &[], json!({ "name": name }).to_string())
        } else {
            let (code, error_code) = usual_error(status);
            let message = match checked {
                Err((_, message)) => message,
                Ok(()) => format!("scripted {status}"),
            };
            record.error = Some(format!("{code} {error_code}"));
            let body = json!({ "error": {
                "code": status,
                "message": message,
                "status": code,
                "details": [{
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": error_code,
                }],
            }});
            let headers = retry_header(status, *lock(&self.retry_after));
            answer(status, &headers, body.to_string())
        };
        self.log.push(record);
        reply
    }

    /// The token endpoint: a JWT bearer grant whose assertion is signed by the account's key
    /// and claims the account (`iss`), this endpoint (`aud`), the scope, and at most an hour.
    fn grant(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let checked = if form.get("grant_type").map(String::as_str) != Some(GRANT_TYPE) {
            Err((
                "unsupported_grant_type",
                "grant_type must be jwt-bearer".to_owned(),
            ))
        } else {
            let assertion = form.get("assertion").map_or("", String::as_str);
            self.check_assertion(assertion)
                .map_err(|why| ("invalid_grant", why))
        };
        match checked {
            Ok(()) => {
                let token = format!("ya29.test-{}", self.grants.len());
                self.grants.push(FcmGrant {
                    status: 200,
                    access_token: Some(token.clone()),
                    error: None,
                });
                let body = json!({
                    "access_token": token,
                    "expires_in": ACCESS_TOKEN_SECONDS,
                    "token_type": "Bearer",
                });
                answer(200, &[], body.to_string())
            }
            Err((error, description)) => {
                self.grants.push(FcmGrant {
                    status: 400,
                    access_token: None,
                    error: Some(format!("{error}: {description}")),
                });
                let body = json!({ "error": error, "error_description": description });
                answer(400, &[], body.to_string())
            }
        }
    }

    fn check_assertion(&self, assertion: &str) -> Result<(), String> {
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([self.client_email.clone()])),
            allowed_audiences: Some(HashSet::from([self.token_uri.clone()])),
            ..VerificationOptions::default()
        };
        let claims = self
            .public_key
            .verify_token::<Map<String, Value>>(assertion, Some(options))
            .map_err(|e| format!("assertion refused: {e}"))?;
        let (Some(issued), Some(expires)) = (claims.issued_at, claims.expires_at) else {
            return Err("iat and exp are required".into());
        };
        if expires.as_secs().saturating_sub(issued.as_secs()) > MAX_ASSERTION_LIFETIME {
            return Err("exp is more than an hour after iat".into());
        }
        let scopes = claims.custom.get("scope").and_then(Value::as_str);
        if !scopes.is_some_and(|s| s.split(' ').any(|scope| scope == SCOPE)) {
            return Err(format!("scope must include {SCOPE}"));
        }
        Ok(())
    }

    /// The send endpoint's checks: the path's project, an access token this double issued,
    /// and the message's shape as FCM's JSON mapping of its protobuf takes it.
    fn check(&self, request: &FcmRequest) -> Result<(), Refusal> {
        let bad = |why: String| Err((400, why));
        let project = request
            .path
            .strip_prefix("/v1/projects/")
            .and_then(|rest| rest.strip_suffix("/messages:send"));
        match project {
            None => return Err((404, format!("no endpoint {}", request.path))),
            Some(p) if p != self.project_id => {
                return Err((403, format!("not allowed for project {p}")));
            }
            Some(_) => {}
        }
        let token = request
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "));
        let issued = token.is_some_and(|token| {
            self.grants
                .all()
                .iter()
                .any(|g| g.access_token.as_deref() == Some(token))
        });
        if !issued || token.is_some_and(|t| lock(&self.revoked).contains(t)) {
            return Err((401, "Request had invalid authentication credentials".into()));
        }
        let Some(body) = request.body.as_object() else {
            return bad("Invalid JSON payload received".into());
        };
        known_fields(body, &["message", "validate_only"], "")?;
        let Some(message) = body.get("message").and_then(Value::as_object) else {
            return bad("message is required".into());
        };
        known_fields(
            message,
            &[
                "name",
                "data",
                "notification",
                "android",
                "webpush",
                "apns",
                "fcm_options",
                "token",
                "topic",
                "condition",
            ],
            "message.",
        )?;
        let targets = ["token", "topic", "condition"]
            .iter()
            .filter(|t| message.contains_key(**t))
            .count();
        let token = message.get("token").and_then(Value::as_str);
        if targets != 1 || token.is_none_or(str::is_empty) {
            return bad("exactly one target, a non-empty token, is required".into());
        }
        if let Some(data) = message.get("data") {
            check_data(data)?;
        }
        if let Some(notification) = message.get("notification") {
            let notification = notification
                .as_object()
                .ok_or_else(|| not_object("message.notification"))?;
            known_fields(
                notification,
                &["title", "body", "image"],
                "message.notification.",
            )?;
            strings(notification, "message.notification")?;
        }
        if let Some(android) = message.get("android") {
            check_android(android)?;
        }
        if let Some(apns) = message.get("apns") {
            let apns = apns.as_object().ok_or_else(|| not_object("message.apns"))?;
            known_fields(
                apns,
                &["headers", "payload", "fcm_options"],
                "message.apns.",
            )?;
            if let Some(headers) = apns.get("headers") {
                let headers = headers
                    .as_object()
                    .ok_or_else(|| not_object("message.apns.headers"))?;
                strings(headers, "message.apns.headers")?;
            }
        }
        Ok(())
    }
}

/// Data: string values only, no key FCM reserves, at most [`MAX_DATA_BYTES`].
fn check_data(data: &Value) -> Result<(), Refusal> {
    let data = data.as_object().ok_or_else(|| not_object("message.data"))?;
    strings(data, "message.data")?;
    for key in data.keys() {
        let reserved = matches!(key.as_str(), "from" | "notification" | "message_type")
            || key.starts_with("google")
            || key.starts_with("gcm");
        if reserved {
            return Err((400, format!("Invalid data payload key: {key}")));
        }
    }
    let size: usize = data
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if size > MAX_DATA_BYTES {
        return Err((400, "Message is too big".into()));
    }
    Ok(())
}

/// Android options: a collapse key, `NORMAL` or `HIGH`, a TTL as protobuf's duration.
fn check_android(android: &Value) -> Result<(), Refusal> {
    let android = android
        .as_object()
        .ok_or_else(|| not_object("message.android"))?;
    known_fields(
        android,
        &[
            "collapse_key",
            "priority",
            "ttl",
            "restricted_package_name",
            "data",
            "notification",
            "fcm_options",
            "direct_boot_ok",
        ],
        "message.android.",
    )?;
    if let Some(priority) = android.get("priority")
        && !matches!(priority.as_str(), Some("NORMAL" | "HIGH"))
    {
        return Err((
            400,
            format!("Invalid value at 'message.android.priority' ({priority})"),
        ));
    }
    if let Some(ttl) = android.get("ttl") {
        // "3.5s": seconds with up to nine decimals.
        let valid = ttl
            .as_str()
            .and_then(|t| t.strip_suffix('s'))
            .is_some_and(|t| {
                let (whole, fraction) = t.split_once('.').unwrap_or((t, "0"));
                !whole.is_empty()
                    && whole.bytes().all(|b| b.is_ascii_digit())
                    && (1..=9).contains(&fraction.len())
                    && fraction.bytes().all(|b| b.is_ascii_digit())
            });
        if !valid {
            return Err((
                400,
                format!("Invalid value at 'message.android.ttl' ({ttl})"),
            ));
        }
    }
    if android.get("collapse_key").is_some_and(|k| !k.is_string()) {
        return Err((400, "message.android.collapse_key must be a string".into()));
    }
    Ok(())
}

/// Refuses a field the protobuf message does not have, as FCM does.
fn known_fields(object: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), Refusal> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err((
            400,
            format!("Invalid JSON payload received. Unknown name \"{at}{unknown}\""),
        )),
        None => Ok(()),
    }
}

/// Refuses a value that is not a string.
fn strings(object: &Map<String, Value>, at: &str) -> Result<(), Refusal> {
    match object.iter().find(|(_, v)| !v.is_string()) {
        Some((key, _)) => Err((400, format!("Invalid value at '{at}[{key}]': not a string"))),
        None => Ok(()),
    }
}

/// The refusal of a value that should be an object.
fn not_object(at: &str) -> Refusal {
    (400, format!("Invalid value at '{at}': not an object"))
}
