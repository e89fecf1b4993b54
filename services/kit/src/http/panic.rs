//! A handler that panics answers `500 internal_error` (with `requestId`, added by the
//! request-id layer) instead of dropping the connection; layered inside the admin-audit
//! layer, so the refusal is recorded like any other.

use std::panic::AssertUnwindSafe;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;

use super::ApiError;

pub async fn layer(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            ApiError::internal(format!("handler of {path} panicked: {what}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use axum::Router;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_a_request_id() {
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let router = Router::new()
            .route("/boom", get(boom))
            .layer(axum::middleware::from_fn(super::layer))
            .layer(axum::middleware::from_fn_with_state(
                "test",
                crate::http::request_id::layer,
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let resp = reqwest::get(format!("http://{addr}/boom")).await.unwrap();
        assert_eq!(resp.status(), 500);
        let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "internal_error");
        assert_eq!(body["requestId"], rid.as_str());
    }
}
