//! Cross-origin calls to the REST API from the dashboard: the gateway serves the page on its own port, so every
//! call the page makes to `/api/v1/...` is cross-origin, and a browser shows the page the answer only when the
//! API names the page's origin in `Access-Control-Allow-Origin`.
//!
//! Which origins: the rule of `ferrite_core::origin` (the one the WebSockets use) with the gateway's port as a
//! sibling ([`OriginPolicy::with_sibling_ports`]): the page under the same machine name on the gateway's port,
//! the same origin, and the `--allowed-origins` list. Others get no CORS headers (the browser then hides the
//! answer), and their preflight a 403 naming the flag. Requests without `Origin` (curl, SDKs) are untouched.
//! No cookies are involved (the API takes bearer tokens), so `Access-Control-Allow-Credentials` is never sent.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferrite_core::origin::OriginPolicy;

use crate::http::ApiError;

/// What a preflight may ask for: every method the API has, and the two headers the dashboard sends.
const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
const ALLOW_HEADERS: &str = "authorization, content-type";
/// Headers a page may read besides the simple ones (`Location` of a created device or command).
const EXPOSE_HEADERS: &str = "location";
/// How long a browser may cache a preflight answer (10 minutes, Chromium's cap is 2 hours).
const PREFLIGHT_MAX_AGE: &str = "600";

/// The middleware over the whole REST router (outside the routes, so a preflight `OPTIONS` is answered for every path).
pub(crate) async fn cors(State(policy): State<Arc<OriginPolicy>>, request: Request, next: Next) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        return next.run(request).await;
    };
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let admitted = admitted(&policy, &origin, request.headers());
    match (preflight, admitted) {
        (true, true) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let headers = response.headers_mut();
            allow(headers, origin);
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE));
            response
        }
        (true, false) => {
            metrics::counter!("ferrite_registry_cors_refused_total").increment(1);
            let shown = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            let allow = ferrite_core::origin::normalize(&shown).unwrap_or_else(|| "<scheme://host:port>".into());
            tracing::debug!(origin = %shown, "refused a cross-origin preflight");
            let mut response = ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "origin {shown:?} may not call this API from a browser: only the dashboard beside it and the origins \
                     in --allowed-origins may (start ferrite with --allowed-origins {allow} or FERRITE_ALLOWED_ORIGINS={allow})"
                ),
            )
            .into_response();
            response.headers_mut().insert(header::VARY, HeaderValue::from_static("origin"));
            response
        }
        (false, admitted) => {
            let mut response = next.run(request).await;
            let headers = response.headers_mut();
            headers.append(header::VARY, HeaderValue::from_static("origin"));
            if admitted {
                allow(headers, origin);
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
            }
            response
        }
    }
}

fn admitted(policy: &OriginPolicy, origin: &HeaderValue, headers: &HeaderMap) -> bool {
    let Ok(origin) = origin.to_str() else { return false };
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok());
    policy.check(Some(origin), host).is_ok()
}

fn allow(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use proptest::prelude::*;
    use tower::ServiceExt;

    fn app() -> Router {
        let policy = Arc::new(
            OriginPolicy::new(vec!["https://dash.example.com".parse().expect("valid")], true)
                .with_sibling_ports([8080]),
        );
        Router::new()
            .route("/api/v1/devices", get(|| async { "[]" }))
            .layer(axum::middleware::from_fn_with_state(policy, cors))
    }

    async fn call(method: Method, origin: Option<&str>, host: &str) -> Response {
        let mut request = Request::builder().method(method).uri("/api/v1/devices").header(header::HOST, host);
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin).header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET");
        }
        app().oneshot(request.body(Body::empty()).expect("a request")).await.expect("an answer")
    }

    #[tokio::test]
    async fn the_dashboard_beside_the_api_is_admitted() {
        let response = call(Method::OPTIONS, Some("http://127.0.0.1:8080"), "127.0.0.1:8081").await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "http://127.0.0.1:8080");
        assert!(response.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().contains("authorization"));
        let response = call(Method::GET, Some("https://dash.example.com"), "127.0.0.1:8081").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://dash.example.com");
    }

    #[tokio::test]
    async fn other_pages_are_refused_and_scripts_untouched() {
        let response = call(Method::OPTIONS, Some("https://evil.example"), "127.0.0.1:8081").await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("a body");
        assert!(String::from_utf8_lossy(&body).contains("--allowed-origins https://evil.example"));
        let response = call(Method::GET, Some("https://evil.example"), "127.0.0.1:8081").await;
        assert!(!response.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        // DNS rebinding: the sibling port under a name that is not loopback.
        let response = call(Method::GET, Some("http://evil.example:8080"), "evil.example:8081").await;
        assert!(!response.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let response = call(Method::GET, None, "127.0.0.1:8081").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any `Origin` and `Host` bytes: an answer, never a panic, and an allowed origin only when the policy admits it.
        #[test]
        fn hostile_headers_never_panic(origin in prop::collection::vec(any::<u8>(), 0..80), host in ".{0,40}", preflight in any::<bool>()) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
            let Ok(origin) = HeaderValue::from_bytes(&origin) else { return Ok(()) };
            let Ok(host_value) = HeaderValue::from_str(&host) else { return Ok(()) };
            let method = if preflight { Method::OPTIONS } else { Method::GET };
            let request = Request::builder()
                .method(method)
                .uri("/api/v1/devices")
                .header(header::HOST, host_value)
                .header(header::ORIGIN, origin.clone())
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
                .body(Body::empty())
                .expect("a request");
            let response = runtime.block_on(app().oneshot(request)).expect("an answer");
            if let Some(allowed) = response.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
                prop_assert_eq!(allowed, &origin);
                let policy = OriginPolicy::new(vec!["https://dash.example.com".parse().expect("valid")], true)
                    .with_sibling_ports([8080]);
                prop_assert!(policy.check(origin.to_str().ok(), Some(&host)).is_ok());
            }
        }
    }
}
