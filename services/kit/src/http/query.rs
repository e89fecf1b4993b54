//! Query strings: a NUL character (`%00`) in any parameter is refused before a handler can
//! hand it to Postgres, which cannot hold one in text (it would answer an internal error).

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Percent-decoding is one pass, so `%00` is the only way a query string decodes to NUL.
fn holds_nul(query: &str) -> bool {
    query.contains("%00") || query.contains('\0')
}

/// `400 invalid_query` for a query string holding a NUL character.
pub async fn refuse_nul(req: Request, next: Next) -> Response {
    if req.uri().query().is_some_and(holds_nul) {
        return ApiError::bad_request("invalid_query")
            .description("query parameters must not contain NUL characters")
            .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::holds_nul;

    #[test]
    fn only_an_encoded_or_raw_nul_is_refused() {
        assert!(holds_nul("label=%00"));
        assert!(holds_nul("a=1&b=x%00y"));
        assert!(holds_nul("a=%%00"));
        assert!(!holds_nul("a=%2500"));
        assert!(!holds_nul("a=100&b=%20"));
    }
}
