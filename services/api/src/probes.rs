//! Outbound connectivity probes (management-api.md §7, §8): the create-time `check` and the
//! `…/test` routes. A provider probe talks to the OAuth token endpoint with the provider's
//! own client authentication; a resource probe sends `HEAD` to the upstream with a
//! deliberately invalid mandate (`401`/`403` ⇒ the upstream guards itself).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use serval_kit::oauth::{self, config_str, string_map};
use serval_kit::state::App;

/// Probes per zone and class in a window opened by the first (§3.5).
pub const PROBES_PER_WINDOW: u64 = 10;
pub const PROBE_WINDOW_MS: u64 = 60_000;

/// A probe's outcome: `{"status","detail","checked_at"}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ConnectivityCheck)]
pub struct Check {
    /// `ok`, `auth_failed`, `unreachable`, `endpoint_error` or `config_error`.
    #[schema(value_type = String)]
    pub status: &'static str,
    pub detail: String,
    #[serde(serialize_with = "ts")]
    #[schema(value_type = String)]
    pub checked_at: DateTime<Utc>,
}

fn ts<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&serval_kit::http::pagination::ts(*t))
}

impl Check {
    fn new(status: &'static str, detail: impl Into<String>) -> Self {
        Check {
            status,
            detail: detail.into(),
            checked_at: Utc::now(),
        }
    }

    pub fn to_json(&self) -> Value {
        crate::views::to_json(self)
    }
}

/// Which bucket a probe counts against.
#[derive(Debug, Clone, Copy)]
pub enum Class {
    Provider,
    Resource,
}

/// Counts one probe of `class` in the zone; true when the window's budget is spent.
pub async fn rate_limited(app: &App, class: Class, zone: &str) -> bool {
    let bucket = match class {
        Class::Provider => "probe-provider",
        Class::Resource => "probe-resource",
    };
    serval_kit::rate_limit::opened_window_exceeded(
        app,
        bucket,
        zone,
        PROBES_PER_WINDOW,
        PROBE_WINDOW_MS,
    )
    .await
}

fn oauth_error(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("error")?
        .as_str()
        .map(str::to_owned)
}

/// Probes an OAuth provider's token endpoint. Client credentials: a real token request
/// (a token means the credentials work). Authorization code: a code exchange with a code
/// that cannot exist — `invalid_grant` means the endpoint authenticated the client and
/// refused only the code.
pub async fn provider(
    kind: &str,
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
) -> Check {
    let Some(endpoint) = config_str(config, "token_endpoint") else {
        return Check::new("config_error", "no token_endpoint");
    };
    if !oauth::endpoint_allowed(config, endpoint) {
        return Check::new(
            "config_error",
            "token_endpoint is not HTTPS on an allowed token host",
        );
    }
    if !serval_kit::egress::literal_allowed(endpoint) {
        return Check::new("unreachable", "token_endpoint is a private address");
    }
    let mut form: Vec<(String, String)> = Vec::new();
    let code_flow = kind == "oauth2_authorization_code";
    if code_flow {
        form.push(("grant_type".into(), "authorization_code".into()));
        form.push((
            "code".into(),
            format!("serval-probe-{}", oauth::random_token()),
        ));
        form.push((
            "redirect_uri".into(),
            config_str(config, "redirect_uri")
                .unwrap_or_default()
                .into(),
        ));
    } else {
        // The very request the STS sends for a token.
        match oauth::client_credentials_form(config, secrets, endpoint) {
            Ok(f) => form = f,
            Err(e) => return Check::new("config_error", e),
        }
    }
    form.extend(string_map(config, "token_params"));
    let req = oauth::client()
        .post(endpoint)
        .header(reqwest::header::ACCEPT, "application/json");
    let req = match oauth::authenticate(config, secrets, &mut form, req, endpoint) {
        Ok(r) => r,
        Err(e) => return Check::new("config_error", e),
    };
    let resp = match req.form(&form).send().await {
        Ok(r) => r,
        Err(e) => return Check::new("unreachable", e.without_url().to_string()),
    };
    let status = resp.status();
    let body = match oauth::read_capped(resp, oauth::MAX_RESPONSE_BYTES).await {
        Ok(b) => b,
        Err(e) => return Check::new("endpoint_error", e),
    };
    let error = oauth_error(&body);
    match (status.as_u16(), error.as_deref()) {
        (401, _) | (_, Some("invalid_client" | "unauthorized_client")) => Check::new(
            "auth_failed",
            format!("token endpoint refused the client ({status})"),
        ),
        (200..=299, _) if !code_flow => match oauth::parse_token_response(&body, true) {
            Ok(_) => Check::new("ok", "token endpoint issued a token"),
            Err(_) => Check::new("endpoint_error", "token response carries no access_token"),
        },
        (400, Some("invalid_grant")) if code_flow => {
            Check::new("ok", "token endpoint authenticated the client")
        }
        _ => Check::new(
            "endpoint_error",
            format!(
                "token endpoint answered {status}{}",
                error.map(|e| format!(" ({e})")).unwrap_or_default()
            ),
        ),
    }
}

/// The client for resource probes: HTTP or HTTPS (upstreams may be either), no
/// redirects, bounded time, the same private-address rule.
fn resource_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| oauth::build(oauth::upstream_builder()))
}

/// A token shaped like a mandate that no issuer signed.
const INVALID_MANDATE: &str =
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzZXJ2YWwtcHJvYmUifQ.aW52YWxpZA";

/// Probes a resource's upstream: `guarded` (401/403: it checks mandates), `unverified` (2xx:
/// it answered without one), `endpoint_error` (anything else), `unreachable`.
pub async fn resource(upstream_url: &str) -> Check {
    if !serval_kit::egress::literal_allowed(upstream_url) {
        return Check::new("unreachable", "upstream_url is a private address");
    }
    let resp = resource_client()
        .head(upstream_url)
        .bearer_auth(INVALID_MANDATE)
        .send()
        .await;
    match resp {
        Err(e) => Check::new("unreachable", e.without_url().to_string()),
        Ok(r) => match r.status().as_u16() {
            401 | 403 => Check::new("guarded", "upstream refused an invalid mandate"),
            200..=299 => Check::new("unverified", "upstream answered without a valid mandate"),
            s => Check::new("endpoint_error", format!("upstream answered {s}")),
        },
    }
}
