//! Every error under `/api/` is JSON (`{"error": "…"}`), including the ones no handler wrote:
//! axum's extractor rejections (a query string or body that does not parse, a missing path
//! segment), `405 Method Not Allowed`, `413 Payload Too Large` from body limits. Handlers answer
//! JSON themselves; [`json_errors`] converts whatever slips through, and cuts its text to
//! [`MAX_ERROR_TEXT`] bytes so that no error sends a long request back.

use axum::Json;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Longest error text (bytes) the converted answer carries.
pub const MAX_ERROR_TEXT: usize = 512;
/// Longest error body read for conversion.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// The middleware (see the module docs).
pub async fn json_errors(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let resp = next.run(req).await;
    let status = resp.status();
    if !api || !(status.is_client_error() || status.is_server_error()) || is_json(&resp) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, MAX_ERROR_BODY).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).trim().to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    (parts, Json(serde_json::json!({ "error": cut(text, MAX_ERROR_TEXT) }))).into_response()
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// `text` cut to at most `max` bytes (at a character boundary), with `…` when cut.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;

    async fn call(app: &Router, uri: &str) -> (StatusCode, String, String) {
        let resp = tower_service::Service::call(&mut app.clone(), Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap_or_else(|e| match e {});
        let ct = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn api_errors_become_json_and_the_rest_stays() {
        #[derive(serde::Deserialize)]
        struct Q {
            #[allow(dead_code)]
            n: u32,
        }
        let app = Router::new()
            .route("/api/v1/q", get(|_: axum::extract::Query<Q>| async { "ok" }))
            .route("/api/v1/long", get(|| async { (StatusCode::BAD_REQUEST, "x".repeat(8192)) }))
            .route("/api/v1/text", get(|| async { "plain answer" }))
            .route("/cache", get(|| async { (StatusCode::BAD_REQUEST, "plain") }))
            .layer(axum::middleware::from_fn(json_errors));
        let (s, ct, body) = call(&app, "/api/v1/q?n=x").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(ct.starts_with("application/json"), "{ct}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("query"), "{body}");
        let (_, _, body) = call(&app, "/api/v1/long").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].as_str().unwrap().len() <= MAX_ERROR_TEXT + 3, "{body}");
        assert_eq!(call(&app, "/api/v1/text").await.2, "plain answer");
        assert_eq!(call(&app, "/cache").await.2, "plain");
    }
}
