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
use crate::{ApiLocation, GatewayState, assets, client};

/// The largest request a browser may send: a publish of up to this much, which is far above any command.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// The page may load only its own files and talk only to its own server (the WebSocket included) and the REST
/// API ([`connect_sources`] adds its origin).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:{api}; img-src 'self' data:; \
     style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The REST API's sources for `connect-src`: its origin, or its port on any host (the page's own host is meant,
/// which CSP cannot say without knowing the name the browser used).
fn connect_sources(api: Option<&ApiLocation>) -> String {
    match api {
        None => String::new(),
        Some(ApiLocation::Url(url)) => format!(" {}", url.as_str()),
        Some(ApiLocation::Port(port)) => format!(" http://*:{port} https://*:{port}"),
    }
}

/// `/config.json`: what the page needs to know about the platform before it starts.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PageConfig {
    /// The REST API's origin; absent when [`PageConfig::api_port`] or nothing is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    api_url: Option<String>,
    /// The REST API's port on the page's own host.
    #[serde(skip_serializing_if = "Option::is_none")]
    api_port: Option<u16>,
}

/// The gateway's routes, apart from serving, so that tests can call them with `oneshot`.
pub fn router(state: GatewayState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*path}", get(asset))
        .route("/config.json", get(page_config))
        .route("/dashboard", get(dashboard))
        .with_state(state)
        .merge(ferrite_telemetry::metrics_router())
}

async fn index(State(state): State<GatewayState>) -> Response {
    match assets::get("index.html") {
        Some(page) => {
            let mut response = serve(page);
            let policy = CONTENT_SECURITY_POLICY.replace("{api}", &connect_sources(state.api()));
            // Built from a constant and a normalised origin or a port: always a valid header value.
            if let Ok(policy) = HeaderValue::from_str(&policy) {
                response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, policy);
            }
            response
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn page_config(State(state): State<GatewayState>) -> Response {
    let config = match state.api() {
        None => PageConfig { api_url: None, api_port: None },
        Some(ApiLocation::Url(url)) => PageConfig { api_url: Some(url.as_str().to_owned()), api_port: None },
        Some(ApiLocation::Port(port)) => PageConfig { api_url: None, api_port: Some(*port) },
    };
    ([(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))], axum::Json(config)).into_response()
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

    async fn app_with(api: Option<ApiLocation>) -> Router {
        let mut config = Config::new(BrokerUrl::Tcp { host: "127.0.0.1".into(), port: 9 });
        config.http_addr = "127.0.0.1:0".parse().expect("valid address");
        config.api = api;
        router(Gateway::bind(config).await.expect("binds").state())
    }

    async fn get(path: &str) -> (StatusCode, HeaderMap, String) {
        get_from(app_with(None).await, path).await
    }

    async fn get_from(app: Router, path: &str) -> (StatusCode, HeaderMap, String) {
        let request = Request::get(path).body(Body::empty()).expect("a valid request");
        let response = app.oneshot(request).await.expect("the router answers");
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
    async fn tells_the_page_where_the_api_is() {
        let (status, headers, body) = get("/config.json").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "{}"));
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let csp = get("/").await.1[header::CONTENT_SECURITY_POLICY].to_str().expect("text").to_owned();
        assert!(csp.contains("connect-src 'self' ws: wss:;"), "{csp}");

        let port = app_with(Some(ApiLocation::Port(8081))).await;
        assert_eq!(get_from(port.clone(), "/config.json").await.2, r#"{"apiPort":8081}"#);
        let csp = get_from(port, "/").await.1[header::CONTENT_SECURITY_POLICY].to_str().expect("text").to_owned();
        assert!(csp.contains("connect-src 'self' ws: wss: http://*:8081 https://*:8081;"), "{csp}");

        let url: crate::ApiUrl = "HTTPS://Api.Example.com:443/".parse().expect("an origin");
        let remote = app_with(Some(ApiLocation::Url(url))).await;
        assert_eq!(get_from(remote.clone(), "/config.json").await.2, r#"{"apiUrl":"https://api.example.com"}"#);
        let csp = get_from(remote, "/").await.1[header::CONTENT_SECURITY_POLICY].to_str().expect("text").to_owned();
        assert!(csp.contains("wss: https://api.example.com;"), "{csp}");
    }

    #[test]
    fn api_urls_are_origins() {
        for bad in
            ["", "api.example.com", "ftp://a", "http://a/api/v1", "http://a b", "http://a:99999", "javascript://x"]
        {
            assert!(bad.parse::<crate::ApiUrl>().is_err(), "{bad:?}");
        }
        assert_eq!("http://10.0.0.5:8081".parse::<crate::ApiUrl>().expect("valid").as_str(), "http://10.0.0.5:8081");
    }

    proptest::proptest! {
        /// Whatever `--api-url` says, it is refused or becomes an origin that is a valid header value in the CSP.
        #[test]
        fn any_api_url_is_refused_or_safe(text in ".{0,60}") {
            if let Ok(url) = text.parse::<crate::ApiUrl>() {
                let policy = CONTENT_SECURITY_POLICY.replace("{api}", &connect_sources(Some(&ApiLocation::Url(url))));
                proptest::prop_assert!(HeaderValue::from_str(&policy).is_ok());
                proptest::prop_assert_eq!(policy.matches(';').count(), 7);
            }
        }
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
