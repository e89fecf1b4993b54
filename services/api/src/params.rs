//! Path parameters: `^[A-Za-z0-9_.\-:]{1,128}$`, else `400 invalid_params` (§1).

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serval_domain::validation::is_valid_identifier;

use serval_kit::http::ApiError;

/// The single `:id`-style parameter of a route.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("invalid_params"))?;
        if !is_valid_identifier(&id) {
            return Err(ApiError::bad_request("invalid_params"));
        }
        Ok(PathId(id))
    }
}

/// Every path parameter of a route, in order, each checked like [`PathId`].
pub struct PathIds(pub Vec<String>);

impl<S: Send + Sync> FromRequestParts<S> for PathIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(pairs) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("invalid_params"))?;
        if pairs.iter().any(|(_, v)| !is_valid_identifier(v)) {
            return Err(ApiError::bad_request("invalid_params"));
        }
        Ok(PathIds(pairs.into_iter().map(|(_, v)| v).collect()))
    }
}

impl PathIds {
    /// The `n`-th parameter (routes name exactly as many as their handlers read).
    pub fn at(&self, n: usize) -> &str {
        self.0.get(n).map(String::as_str).unwrap_or_default()
    }
}
