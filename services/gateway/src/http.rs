//! The HTTP side: the dashboard page and its assets, the `/dashboard` WebSocket, `/healthz` and `/metrics`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, http};
use futures::StreamExt;
use serde::Deserialize;

use crate::policy::ClientInfo;
use crate::{GatewayState, assets, client};

/// The largest request a browser may send: a publish of up to this much, which is far above any command.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// The page may load only its own files and talk only to its own server (the WebSocket included).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
     style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The gateway's routes, apart from serving, so that tests can call them with `oneshot`.
pub fn router(state: GatewayState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*path}", get(asset))
        .route("/dashboard", get(dashboard))
        .with_state(state)
        .merge(ferrite_telemetry::metrics_router())
}

async fn index() -> Response {
    match assets::get("index.html") {
        Some(page) => {
            let mut response = serve(page);
            response
                .headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
            response
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn asset(Path(path): Path<String>) -> Response {
    match assets::get(&path) {
        Some(asset) => serve(asset),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

fn serve(asset: &'static assets::Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            // The files change with the binary; revalidating each time is cheap on loopback and never stale.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        asset.body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct DashboardQuery {
    token: Option<String>,
}

async fn dashboard(
    upgrade: WebSocketUpgrade,
    State(state): State<GatewayState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Query(query): Query<DashboardQuery>,
) -> Response {
    if state.closing().is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down").into_response();
    }
    let origin = headers.get(header::ORIGIN).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok());
    if let Err(refusal) = state.origins().check(origin.as_deref(), host) {
        metrics::counter!("ferrite_gateway_origin_refused_total").increment(1);
        tracing::warn!(origin = refusal.origin(), "refused a WebSocket from another origin: {refusal}");
        return (StatusCode::FORBIDDEN, refusal.to_string()).into_response();
    }
    let Some(browser) = state.browser_permit() else {
        metrics::counter!("ferrite_gateway_browsers_refused_total").increment(1);
        let message = format!(
            "too many browsers: this gateway serves at most {} at once (--max-browsers / FERRITE_MAX_BROWSERS)",
            state.max_browsers()
        );
        tracing::warn!("{message}");
        return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    };
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let info = ClientInfo { peer: connect.map(|Extension(ConnectInfo(peer))| peer), token: bearer.or(query.token) };
    let tracker = state.tracker();
    upgrade.max_message_size(MAX_REQUEST_BYTES).max_frame_size(MAX_REQUEST_BYTES).on_upgrade(move |socket| {
        let (sink, stream) = socket.split();
        tracker.track_future(async move {
            let _browser = browser;
            state.policy().admit(&info).await;
            client::serve(state, info, sink, stream).await
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Gateway};
    use axum::body::Body;
    use axum::http::Request;
    use ferrite_mqtt::BrokerUrl;
    use tower::ServiceExt;

    async fn app() -> Router {
        let mut config = Config::new(BrokerUrl::Tcp { host: "127.0.0.1".into(), port: 9 });
        config.http_addr = "127.0.0.1:0".parse().expect("valid address");
        router(Gateway::bind(config).await.expect("binds").state())
    }

    async fn get(path: &str) -> (StatusCode, HeaderMap, String) {
        let request = Request::get(path).body(Body::empty()).expect("a valid request");
        let response = app().await.oneshot(request).await.expect("the router answers");
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.expect("a body");
        (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn serves_the_dashboard_and_its_assets() {
        let (status, headers, body) = get("/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
        assert!(body.contains("<title>Ferrite</title>"), "{body}");
        for asset in assets::ASSETS {
            let (status, headers, _) = get(&format!("/assets/{}", asset.path)).await;
            assert_eq!(status, StatusCode::OK, "{}", asset.path);
            assert_eq!(headers[header::CONTENT_TYPE], asset.content_type, "{}", asset.path);
        }
        // Every file the page names is one we serve.
        for reference in body.split("\"/assets/").skip(1) {
            let path = &reference[..reference.find('"').expect("a closing quote")];
            assert!(assets::get(path).is_some(), "index.html names a missing asset {path}");
        }
        assert_eq!(get("/assets/nope.js").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get("/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn serves_health_and_metrics() {
        let (status, _, body) = get("/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        assert_eq!(get("/metrics").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn the_websocket_needs_an_upgrade() {
        let (status, _, _) = get("/dashboard").await;
        assert!(status.is_client_error(), "{status}");
    }
}
