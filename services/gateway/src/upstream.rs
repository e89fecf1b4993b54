//! Building the upstream request (gateway.md §6–§8): the address rule, the URL, the
//! filtered headers and the injected credential.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::{Map, Value};
use url::Url;

use crate::error::GatewayError;

/// Headers never taken from the caller (§7) besides `X-Caracal-*` and `X-Forwarded-*`.
const DROPPED: [&str; 13] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "forwarded",
    "x-real-ip",
    "authorization",
    "host",
];

/// Credential header names that may never be set (§6.1).
const RESERVED: [&str; 20] = [
    "baggage",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "expect",
    "forwarded",
    "host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "traceparent",
    "tracestate",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
    "x-real-ip",
    "x-request-id",
];

/// Path characters re-escaped when the decoded request path is joined to the base.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'%');

fn build_failed() -> GatewayError {
    GatewayError::internal(StatusCode::BAD_REQUEST, "upstream request build failed")
}

/// §3 step 10: no `.`/`..` segment after repeated percent-decoding, no backslash, a clean
/// decoding. Returns the decoded path.
pub fn safe_path(raw: &str) -> Option<String> {
    let mut cur = raw.to_owned();
    for _ in 0..4 {
        // Control characters (NUL, CR, LF, …) have no place in a path, and a NUL would
        // reach the audit ledger's JSON, which Postgres cannot cast to jsonb.
        if cur.contains('\\') || cur.chars().any(char::is_control) {
            return None;
        }
        if cur.split('/').any(|s| s == "." || s == "..") {
            return None;
        }
        let next = percent_decode_str(&cur).decode_utf8().ok()?.into_owned();
        if next == cur {
            return Some(cur);
        }
        cur = next;
    }
    None
}

/// §8: an address the Gateway will not dial.
fn unsafe_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.is_multicast() || v4.is_unspecified() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            // IPv4 embedded in IPv6 (mapped, NAT64 `64:ff9b::/96`, …) is judged as itself.
            if let Some(v4) = serval_kit::egress::embedded_ipv4(v6) {
                return unsafe_ip(IpAddr::V4(v4));
            }
            v6.is_multicast() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// §8: scheme, no userinfo, a host on the allow-list (when set), every resolved address
/// dialable. The upstream URL comes from operator configuration, never from the caller.
pub async fn check_safe(url: &Url, allowlist: &[String]) -> Result<(), GatewayError> {
    let refused = || GatewayError::internal(StatusCode::BAD_GATEWAY, "upstream not addressable");
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(refused());
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(refused)?;
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if !allowlist.is_empty() && !allowlist.iter().any(|a| a.eq_ignore_ascii_case(&bare)) {
        return Err(refused());
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<IpAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((bare.as_str(), port))
            .await
            .map_err(|_| refused())?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() || addrs.iter().any(|ip| unsafe_ip(*ip)) {
        return Err(refused());
    }
    Ok(())
}

/// §7 URL: base path joined with the decoded request path; the upstream's query keys win.
pub fn target_url(base: &Url, decoded_path: &str, query: Option<&str>) -> Url {
    let mut url = base.clone();
    let bp = base.path();
    let joined = if bp.is_empty() || bp == "/" {
        if decoded_path.is_empty() {
            "/".to_owned()
        } else {
            decoded_path.to_owned()
        }
    } else if decoded_path.is_empty() || decoded_path == "/" {
        bp.to_owned()
    } else {
        let mut segs: Vec<&str> = bp.split('/').filter(|s| !s.is_empty()).collect();
        segs.extend(decoded_path.split('/').filter(|s| !s.is_empty()));
        format!("/{}", segs.join("/"))
    };
    url.set_path(&utf8_percent_encode(&joined, PATH).to_string());
    let mut pairs: Vec<(String, String)> = base
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some(q) = query {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            if !base.query_pairs().any(|(bk, _)| bk == k) {
                pairs.push((k.into_owned(), v.into_owned()));
            }
        }
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.set_fragment(None);
    url
}

/// The caller's headers as the upstream may see them (§7).
pub fn forwarded_headers(inbound: &HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<String> = inbound
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::new();
    for (name, value) in inbound {
        let n = name.as_str();
        if DROPPED.contains(&n)
            || n.starts_with("x-caracal-")
            || n.starts_with("x-forwarded-")
            || named_by_connection.iter().any(|c| c == n)
            || n == "content-length"
        {
            continue;
        }
        if n == "baggage" {
            let kept: Vec<&str> = value
                .to_str()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty() && !m.to_ascii_lowercase().starts_with("caracal."))
                .collect();
            if let Ok(v) = HeaderValue::from_str(&kept.join(",")) {
                if !kept.is_empty() {
                    out.append(name.clone(), v);
                }
            }
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

fn header_name(d: &Map<String, Value>) -> Result<HeaderName, GatewayError> {
    let raw = d
        .get("auth_header")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("Authorization");
    let name = HeaderName::from_bytes(raw.as_bytes()).map_err(|_| build_failed())?;
    let n = name.as_str();
    if RESERVED.contains(&n)
        || n.starts_with("x-caracal-")
        || n.starts_with("x-forwarded-")
        || n.starts_with("proxy-")
    {
        return Err(build_failed());
    }
    Ok(name)
}

/// The directive's credential applied (§6.1); the plaintext lives only in `headers`/`url`.
pub fn inject(
    d: &Map<String, Value>,
    resource_mandate: &str,
    headers: &mut HeaderMap,
    url: &mut Url,
) -> Result<(), GatewayError> {
    let name = header_name(d)?;
    headers.remove("authorization");
    headers.remove(&name);
    let text = |k: &str| d.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let set = |headers: &mut HeaderMap, value: String| -> Result<(), GatewayError> {
        let mut v = HeaderValue::from_str(&value).map_err(|_| build_failed())?;
        v.set_sensitive(true);
        headers.insert(name.clone(), v);
        Ok(())
    };
    let forward = d
        .get("forward_caracal_identity")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match text("auth_mode").unwrap_or_default() {
        "none" => {}
        "caracal_jwt" => {
            let scheme = text("auth_scheme").unwrap_or("Bearer");
            set(headers, format!("{scheme} {resource_mandate}"))?;
        }
        mode @ ("provider_oauth" | "provider_apikey") => {
            let token = text("provider_token").ok_or_else(build_failed)?;
            if mode == "provider_apikey" && text("auth_location") == Some("query") {
                let param = text("query_param_name").ok_or_else(build_failed)?;
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(k, _)| k != param)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                url.query_pairs_mut()
                    .clear()
                    .extend_pairs(pairs)
                    .append_pair(param, token);
            } else {
                match text("auth_scheme") {
                    Some(s) => set(headers, format!("{s} {token}"))?,
                    None => set(headers, token.to_owned())?,
                }
            }
            if forward {
                let mut v = HeaderValue::from_str(resource_mandate).map_err(|_| build_failed())?;
                v.set_sensitive(true);
                headers.insert("x-caracal-identity", v);
            }
        }
        _ => return Err(build_failed()),
    }
    Ok(())
}

/// §6.4: a static credential goes only to the hosts its provider lists (any host when the
/// list is empty).
pub fn credential_host_allowed(d: &Map<String, Value>, url: &Url) -> bool {
    let Some(hosts) = d.get("allowed_token_hosts").and_then(Value::as_array) else {
        return true;
    };
    if hosts.is_empty() {
        return true;
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    hosts
        .iter()
        .filter_map(Value::as_str)
        .any(|h| h.eq_ignore_ascii_case(&host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused_at_every_decoding_depth() {
        assert_eq!(safe_path("/v1/tickets").as_deref(), Some("/v1/tickets"));
        assert!(safe_path("/v1/../admin").is_none());
        assert!(safe_path("/v1/%2e%2e/admin").is_none());
        assert!(safe_path("/v1/%252e%252e/admin").is_none());
        assert!(safe_path("/v1\\admin").is_none());
        assert!(safe_path("/v1/%5cadmin").is_none());
        assert!(safe_path("/v1/%ff").is_none());
        assert!(safe_path("/v1/a%00b").is_none());
        assert!(safe_path("/v1/a%0d%0aX-Injected:%20y").is_none());
        assert!(safe_path("/v1/a%2500b").is_none());
    }

    #[test]
    fn urls_join_and_upstream_query_keys_win() {
        let base = Url::parse("http://up.example:9/api?key=a").unwrap();
        let u = target_url(&base, "/v1/x", Some("key=b&z=1"));
        assert_eq!(u.as_str(), "http://up.example:9/api/v1/x?key=a&z=1");
        let root = Url::parse("http://up.example/").unwrap();
        assert_eq!(target_url(&root, "", None).as_str(), "http://up.example/");
    }

    #[test]
    fn caracal_headers_and_baggage_members_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("x-caracal-resource", HeaderValue::from_static("r"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        h.insert(
            "baggage",
            HeaderValue::from_static("caracal.session=s, team=a"),
        );
        h.insert("x-request-id", HeaderValue::from_static("rid"));
        let out = forwarded_headers(&h);
        assert!(out.get("x-caracal-resource").is_none() && out.get("authorization").is_none());
        assert_eq!(out["baggage"], "team=a");
        assert_eq!(out["x-request-id"], "rid");
    }

    #[test]
    fn link_local_and_nat64_embedded_addresses_are_unsafe() {
        assert!(unsafe_ip("169.254.169.254".parse().unwrap()));
        assert!(unsafe_ip("64:ff9b::a9fe:a9fe".parse().unwrap()));
        assert!(!unsafe_ip("127.0.0.1".parse().unwrap()));
        assert!(!unsafe_ip("10.0.0.1".parse().unwrap()));
    }
}
