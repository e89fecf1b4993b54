//! Service registrations (coordinator.md §5.1, §5.2): one per (application, endpoint URL),
//! created or updated in place.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use serde_json::Value;
use serval_domain::catalog::agent_service::{endpoint_key, ENDPOINT};
use serval_domain::catalog::{AgentServiceData, CatalogKind, EntityData};
use serval_kit::http::body::RawBody;
use serval_kit::http::request_id::RequestId;
use serval_kit::http::ApiError;
use serval_kit::write::Failure;
use serval_kit::App;
use serval_projector::catalog as read;
use serval_streams::append::Reservation;
use serval_streams::LogStream;

use crate::auth::{authenticate, Operator};
use crate::http::{object, path_ids, Fields, ListQuery};
use crate::render;
use crate::sessions::{live_application, writer};
use crate::store;

fn absolute_url(s: &str) -> bool {
    url_like(s)
}

/// An absolute URL: a scheme, `://`, and a host.
fn url_like(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !rest.starts_with('/')
        && !s.chars().any(char::is_whitespace)
}

/// `POST /zones/:zoneId/agent-services`.
pub async fn register(
    State(app): State<App>,
    Path(zone): Path<String>,
    rid: RequestId,
    headers: HeaderMap,
    RawBody(raw): RawBody,
) -> Result<Response, ApiError> {
    let body = object(&headers, &raw)?;
    let p = authenticate(&app, &headers, &zone, Operator::Refused).await?;
    path_ids(&[&zone])?;
    let mut f = Fields::new(&body);
    let application_id = f.nonempty("application_id", true).unwrap_or_default();
    let endpoint_url = f.string("endpoint_url", true, false).unwrap_or_default();
    if f.present("endpoint_url") && !absolute_url(&endpoint_url) {
        f.fail("endpoint_url", "Invalid url");
    }
    let protocol_versions = f
        .strings("protocol_versions", 64, |s| {
            s.is_empty().then_some("must not be empty")
        })
        .unwrap_or_default();
    let framework = f.object("framework");
    let (framework_name, framework_version) = match &framework {
        Some(m) => {
            let name = m.get("name").and_then(Value::as_str).map(str::to_owned);
            let version = match m.get("version") {
                None => None,
                Some(Value::String(v)) => Some(v.clone()),
                Some(_) => {
                    f.fail("framework", "version must be a string");
                    None
                }
            };
            if name.is_none() {
                f.fail("framework", "name is required");
            }
            (name, version)
        }
        None => (None, None),
    };
    let capabilities = f.strings("capabilities", 256, |_| None).unwrap_or_default();
    let metadata = f.object("metadata").unwrap_or_default();
    f.finish()?;
    if !p.may(&application_id, "coordinator.spawn_for", false) {
        return Err(ApiError::forbidden("application_ownership_required"));
    }
    live_application(&app, &zone, &application_id).await?;
    let w = writer(&p, &rid);
    let key = endpoint_key(&application_id, &endpoint_url);
    let stream = LogStream::Zone(zone.clone());
    for _ in 0..3 {
        let holder = app
            .store
            .reservation_holder(&stream, ENDPOINT, &key)
            .await?;
        let e = if let Some(id) = holder {
            let updated = store::update(
                &app,
                &w,
                &zone,
                &id,
                &[
                    "capabilities",
                    "metadata_json",
                    "protocol_versions",
                    "framework_name",
                    "framework_version",
                ],
                |cur| match &cur.data {
                    EntityData::AgentService(a) => {
                        let mut next = a.clone();
                        next.protocol_versions = protocol_versions.clone();
                        next.framework_name = framework_name.clone();
                        next.framework_version = framework_version.clone();
                        next.capabilities = capabilities.clone();
                        next.metadata_json = Value::Object(metadata.clone());
                        Some(EntityData::AgentService(next))
                    }
                    _ => None,
                },
            )
            .await?;
            match updated {
                Some(e) => e,
                // Nothing changed: the registration as the read model has it.
                None => match read::load(&app.pool, &zone, &id).await? {
                    Some(e) => e,
                    None => continue,
                },
            }
        } else {
            let id = uuid::Uuid::now_v7().to_string();
            let data = AgentServiceData {
                application_id: application_id.clone(),
                endpoint_url: endpoint_url.clone(),
                protocol_versions: protocol_versions.clone(),
                framework_name: framework_name.clone(),
                framework_version: framework_version.clone(),
                capabilities: capabilities.clone(),
                health: "starting".into(),
                metadata_json: Value::Object(metadata.clone()),
                last_heartbeat_at: None,
            };
            let reserve = vec![Reservation {
                kind: ENDPOINT,
                value: key.clone(),
            }];
            match store::create(
                &app,
                &w,
                &zone,
                &id,
                EntityData::AgentService(data),
                reserve,
                None,
            )
            .await
            {
                Ok(o) => match o.folded(None).flatten() {
                    Some(e) => e,
                    None => continue,
                },
                // A concurrent registration of the same endpoint won: update it instead.
                Err(Failure::Taken { .. }) => continue,
                Err(f) => return Err(f.into()),
            }
        };
        if let EntityData::AgentService(a) = &e.data {
            return Ok((StatusCode::CREATED, Json(render::service(&e, a))).into_response());
        }
    }
    Err(ApiError::conflict("conflict"))
}

/// `GET /zones/:zoneId/agent-services`.
pub async fn list(
    State(app): State<App>,
    Path(zone): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&app, &headers, &zone, Operator::Allowed).await?;
    path_ids(&[&zone])?;
    let lq = ListQuery::parse(raw.as_deref(), &[])?;
    if let Some(c) = &lq.cursor {
        let ok = matches!(
            read::load(&app.pool, &zone, c).await?.map(|e| e.data),
            Some(EntityData::AgentService(_))
        );
        if !ok {
            return Err(ApiError::bad_request("invalid_cursor"));
        }
    }
    let rows = serval_projector::sessions::kind_page(
        &app.pool,
        &zone,
        CatalogKind::AgentService,
        &[],
        None,
        lq.cursor.as_deref(),
        lq.limit,
    )
    .await?;
    let items = rows
        .iter()
        .filter_map(|e| match &e.data {
            EntityData::AgentService(a) => Some(render::service(e, a)),
            _ => None,
        })
        .collect();
    Ok(Json(crate::http::page(
        items,
        rows.iter().map(|e| e.id.clone()).collect(),
        lq.limit,
    )))
}

#[cfg(test)]
mod tests {
    #[test]
    fn absolute_urls() {
        assert!(super::absolute_url("https://svc.example/x"));
        assert!(super::absolute_url("http://127.0.0.1:9000"));
        assert!(!super::absolute_url("/relative"));
        assert!(!super::absolute_url("https:///nohost"));
        assert!(!super::absolute_url("not a url"));
    }
}
