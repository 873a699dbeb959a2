//! `confab serve`'s push settings (PROTOCOL.md "Push"; the operations guide explains each).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use confab_server::config::{
    APNS_ENDPOINT, ApnsConfig, FCM_ENDPOINT, FcmConfig, PushConfig, parse_gateway,
};

fn defaults() -> PushConfig {
    PushConfig::default()
}

#[derive(Args)]
pub struct PushArgs {
    /// Accept Web Push endpoints on loopback and private addresses, and plain http (tests,
    /// private networks). Off: only https endpoints on public addresses.
    #[arg(long, env = "CONFAB_PUSH_ALLOW_PRIVATE")]
    push_allow_private: bool,
    /// The VAPID private key (PKCS#8 PEM) to sign Web Push with. Default: one the store
    /// keeps, generated at the first start and shared by every node of a cluster.
    #[arg(long, env = "CONFAB_VAPID_KEY", value_name = "PEM_FILE")]
    vapid_key: Option<PathBuf>,
    /// The VAPID subject: how push services reach the operator (mailto: or https: URL).
    #[arg(long, env = "CONFAB_VAPID_SUBJECT", default_value_t = defaults().vapid_subject)]
    vapid_subject: String,
    /// A push gateway speaking the Matrix Push Gateway API (e.g. Sygnal), as NAME=URL
    /// (repeatable; the variable takes a comma-separated list).
    #[arg(long = "push-gateway", env = "CONFAB_PUSH_GATEWAYS", value_delimiter = ',',
          value_parser = parse_gateway, value_name = "NAME=URL")]
    push_gateways: Vec<(String, String)>,
    /// APNs: the .p8 signing key (token-based authentication). With --apns-key-id,
    /// --apns-team-id and --apns-topic, devices may subscribe with `"kind":"apns"`.
    #[arg(long, env = "CONFAB_APNS_KEY", value_name = "P8_FILE",
          requires_all = ["apns_key_id", "apns_team_id", "apns_topic"])]
    apns_key: Option<PathBuf>,
    /// APNs: the signing key's id.
    #[arg(long, env = "CONFAB_APNS_KEY_ID")]
    apns_key_id: Option<String>,
    /// APNs: the developer team id.
    #[arg(long, env = "CONFAB_APNS_TEAM_ID")]
    apns_team_id: Option<String>,
    /// APNs: the app's bundle id (`apns-topic`).
    #[arg(long, env = "CONFAB_APNS_TOPIC")]
    apns_topic: Option<String>,
    /// APNs: the endpoint (https://api.sandbox.push.apple.com for development builds).
    #[arg(long, env = "CONFAB_APNS_ENDPOINT", default_value = APNS_ENDPOINT)]
    apns_endpoint: String,
    /// FCM: the service account's JSON key file. With it, devices may subscribe with
    /// `"kind":"fcm"`.
    #[arg(long, env = "CONFAB_FCM_CREDENTIALS", value_name = "JSON_FILE")]
    fcm_credentials: Option<PathBuf>,
    /// FCM: the endpoint.
    #[arg(long, env = "CONFAB_FCM_ENDPOINT", default_value = FCM_ENDPOINT)]
    fcm_endpoint: String,
    /// Requests to push services in flight at once.
    #[arg(long, env = "CONFAB_PUSH_CONCURRENCY",
          default_value_t = u16::try_from(defaults().concurrency).unwrap_or(u16::MAX),
          value_parser = clap::value_parser!(u16).range(1..))]
    push_concurrency: u16,
    /// Seconds one request to a push service may take.
    #[arg(long, env = "CONFAB_PUSH_TIMEOUT", default_value_t = defaults().request_timeout.as_secs_f64())]
    push_timeout: f64,
    /// Most notifications waiting to be sent; past it new ones are dropped (and counted).
    #[arg(long, env = "CONFAB_PUSH_MAX_PENDING", default_value_t = defaults().max_pending)]
    push_max_pending: u64,
    /// Seconds before a failed notification's first retry (each next one doubles, with jitter).
    #[arg(long, env = "CONFAB_PUSH_RETRY_BASE", default_value_t = defaults().retry_base.as_secs_f64())]
    push_retry_base: f64,
    /// Seconds a node's claim on an intent or a notification lasts: a node that dies holding
    /// one leaves it to the others after this. Keep it well above --push-timeout: a claim that
    /// ends while its request is in flight is claimed and sent again. Hidden: for tests of a
    /// node's death, which would otherwise wait out the default.
    #[arg(long, env = "CONFAB_PUSH_LEASE", hide = true, default_value_t = defaults().lease.as_secs_f64())]
    push_lease: f64,
}

impl PushArgs {
    pub fn apply(self, push: &mut PushConfig) -> Result<(), String> {
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!("{name} must be a positive number of seconds"))
            }
        };
        push.allow_private = self.push_allow_private;
        push.vapid_key = self.vapid_key;
        push.vapid_subject = self.vapid_subject;
        push.gateways = self.push_gateways;
        push.apns = match self.apns_key {
            Some(key) => Some(ApnsConfig {
                key,
                key_id: self.apns_key_id.unwrap_or_default(),
                team_id: self.apns_team_id.unwrap_or_default(),
                topic: self.apns_topic.unwrap_or_default(),
                endpoint: self.apns_endpoint.trim_end_matches('/').to_owned(),
            }),
            None => None,
        };
        push.fcm = self.fcm_credentials.map(|credentials| FcmConfig {
            credentials,
            endpoint: self.fcm_endpoint.trim_end_matches('/').to_owned(),
        });
        push.concurrency = usize::from(self.push_concurrency);
        push.request_timeout = secs("--push-timeout", self.push_timeout)?;
        push.max_pending = self.push_max_pending;
        push.retry_base = secs("--push-retry-base", self.push_retry_base)?;
        push.lease = secs("--push-lease", self.push_lease)?;
        Ok(())
    }
}
