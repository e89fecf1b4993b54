//! The request a write handler takes: who asks (the authenticated admin token and the
//! attribution header), the request id, method, path and headers.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use serval_domain::Actor;
use serval_streams::append::Idempotency;

use crate::auth::Principal;
use crate::http::{ApiError, RequestId};

/// What a write needs of its request: who asks, its id, method, path, headers.
pub struct Req {
    pub principal: Principal,
    pub rid: String,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
}

impl<S: Send + Sync> FromRequestParts<S> for Req {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let RequestId(rid) = match RequestId::from_request_parts(parts, state).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        Ok(Req {
            principal,
            rid,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
        })
    }
}

impl Req {
    pub fn actor(&self) -> Actor {
        self.principal.actor(&self.headers)
    }

    pub fn is_global(&self) -> bool {
        self.principal.token.scope == serval_domain::admin_token::TokenScope::Global
    }

    /// The request's `Idempotency-Key` record, bound to this method, path and body, and
    /// named by the authenticated token (never by the attribution header, which the client
    /// chooses: another token must not reach this record).
    pub fn idempotency(&self, body: &[u8]) -> Result<Option<Idempotency>, ApiError> {
        crate::write::idempotency(
            &self.headers,
            &format!("admin:{}", self.principal.token.id),
            &self.method,
            &self.path,
            body,
        )
    }
}
