//! The REST face: `/api/v1/devices...` and `/api/v1/tokens...` over [`RegistryService`], the OpenAPI document
//! generated from these handlers, and the HTTP status of each [`RegistryError`] (the JSON error plumbing is `ferrite_api::http`).

use std::convert::Infallible;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use secrecy::ExposeSecret;
use serde::{Deserialize, Deserializer, Serialize};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::model::{
    ApiToken, Device, DeviceChanges, DeviceFilter, IssuedCredentials, NewDevice, PageRequest, PresenceChange,
    PresenceEvent,
};
use crate::{RegistryError, RegistryService};
use ferrite_api::ApiGuard;
use ferrite_api::http::{ApiError, ErrorBody, Json, Path, Query};

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        err.log_if_internal();
        let status = match &err {
            RegistryError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            RegistryError::DeviceNotFound(_) | RegistryError::TokenNotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::DeviceExists(_) => StatusCode::CONFLICT,
            RegistryError::Unauthenticated => StatusCode::UNAUTHORIZED,
            RegistryError::Lagged(_) => StatusCode::CONFLICT,
            RegistryError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
            RegistryError::Internal(_) | RegistryError::Bind { .. } | RegistryError::InvalidConfig(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, err.public_message())
    }
}

#[derive(Clone)]
struct RestState {
    service: RegistryService,
}

/// The registry's HTTP routes: the API under `/api/v1` (token checked), `/openapi.json`, `/healthz` and `/metrics`.
pub(crate) fn router(
    service: RegistryService,
    guard: ApiGuard,
    extension: Router,
    extension_openapi: Option<utoipa::openapi::OpenApi>,
) -> Router {
    let state = RestState { service };
    let mut document = openapi();
    if let Some(extra) = extension_openapi {
        document.merge(extra);
    }
    // axum refuses a route layer on a router without routes.
    let extension = match extension.has_routes() {
        true => extension.route_layer(axum::middleware::from_fn_with_state(guard.clone(), ferrite_api::require_token)),
        false => extension,
    };
    let api = Router::new()
        .route("/api/v1/devices", get(list_devices).post(create_device))
        .route("/api/v1/devices/{id}", get(get_device).patch(update_device).delete(delete_device))
        .route("/api/v1/devices/{id}/credentials", post(rotate_credentials))
        .route("/api/v1/devices/{id}/presence", get(presence_history))
        .route("/api/v1/presence/events", get(presence_events))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        // A route layer runs only for matched routes, so an unknown path is a 404, not a 401.
        .route_layer(axum::middleware::from_fn_with_state(guard, ferrite_api::require_token))
        .with_state(state)
        .merge(extension);
    api.route("/openapi.json", get(move || async move { axum::Json(document) }))
        .merge(ferrite_telemetry::metrics_router())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async { ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed") })
        .layer(axum::middleware::from_fn(crate::trace::http_span))
}

/// The OpenAPI 3 document of the REST API, generated from the handlers below.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Ferrite device registry", description = "Devices, their MQTT credentials and presence, and API tokens."),
    paths(
        list_devices, create_device, get_device, update_device, delete_device, rotate_credentials,
        presence_history, presence_events, list_tokens, create_token, revoke_token, healthz, metrics
    ),
    components(schemas(
        Device, crate::model::PresenceState, PresenceChange, PresenceEvent, ApiToken, ErrorBody, DevicePage, CreateDeviceBody,
        UpdateDeviceBody, CreatedDevice, Credentials, CreateTokenBody, CreatedToken
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Query of `GET /api/v1/devices`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Comma-separated tags; only devices carrying all of them.
    tag: Option<String>,
    /// `true`: online devices; `false`: offline or never seen.
    online: Option<bool>,
    /// Only devices whose id starts with this.
    prefix: Option<String>,
    /// Devices per page (default 100, at most 1000).
    limit: Option<u32>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// One page of devices.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DevicePage {
    devices: Vec<Device>,
    /// Pass it as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateDeviceBody {
    #[schema(example = "kitchen-1")]
    id: String,
    name: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

/// Fields left out stay as they are; `"name": null` clears the name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateDeviceBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    name: Option<Option<String>>,
    tags: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

/// Tells an explicit `null` (`Some(None)`) from a missing field (`None`, through `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// MQTT credentials: username = `username`, password = `secret`. The secret is shown only in this response.
// No Debug: nothing should be able to log the secret by accident.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub device_id: String,
    pub username: String,
    pub secret: String,
}

impl From<IssuedCredentials> for Credentials {
    fn from(issued: IssuedCredentials) -> Self {
        Credentials {
            username: issued.device_id.clone(),
            device_id: issued.device_id,
            secret: issued.secret.expose_secret().to_owned(),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreatedDevice {
    device: Device,
    credentials: Credentials,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTokenBody {
    #[schema(example = "ci")]
    name: String,
}

/// A new API token: send `secret` as `Authorization: Bearer <secret>`; it is shown only in this response.
#[derive(Serialize, ToSchema)]
struct CreatedToken {
    token: ApiToken,
    secret: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct TokenQuery {
    /// Include revoked tokens.
    include_revoked: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct PresenceQuery {
    /// Comma-separated device ids; all devices when absent.
    device: Option<String>,
    /// First send the current presence of each device.
    include_current: Option<bool>,
}

fn comma_list(value: Option<String>) -> Vec<String> {
    value
        .map(|value| value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Lists devices, a page at a time, in id order.
#[utoipa::path(get, path = "/api/v1/devices", params(ListQuery), responses(
    (status = 200, body = DevicePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_devices(
    State(state): State<RestState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<DevicePage>, ApiError> {
    let filter = DeviceFilter { tags: comma_list(query.tag), online: query.online, id_prefix: query.prefix };
    let page = PageRequest { size: query.limit.unwrap_or(0), cursor: query.cursor.filter(|c| !c.is_empty()) };
    let page = state.service.list_devices(&filter, &page).await?;
    Ok(Json(DevicePage { devices: page.items, next_cursor: page.next_cursor }))
}

/// Registers a device and issues its MQTT credentials (the secret is shown only here).
#[utoipa::path(post, path = "/api/v1/devices", request_body = CreateDeviceBody, responses(
    (status = 201, body = CreatedDevice), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 409, description = "the device exists", body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 422, body = ErrorBody)))]
async fn create_device(
    State(state): State<RestState>,
    Json(body): Json<CreateDeviceBody>,
) -> Result<Response, ApiError> {
    let new = NewDevice {
        id: body.id,
        name: body.name,
        tags: body.tags,
        metadata: body.metadata.unwrap_or(serde_json::Value::Null),
    };
    let (device, credentials) = state.service.create_device(new).await?;
    let location = format!("/api/v1/devices/{}", device.id);
    let body = CreatedDevice { device, credentials: credentials.into() };
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(body)).into_response())
}

/// One device.
#[utoipa::path(get, path = "/api/v1/devices/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = Device), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn get_device(State(state): State<RestState>, Path(id): Path<String>) -> Result<Json<Device>, ApiError> {
    Ok(Json(state.service.get_device(&id).await?))
}

/// Changes a device's name, tags or metadata; fields left out stay as they are.
#[utoipa::path(patch, path = "/api/v1/devices/{id}", params(("id" = String, Path)), request_body = UpdateDeviceBody,
    responses((status = 200, body = Device), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_device(
    State(state): State<RestState>,
    Path(id): Path<String>,
    Json(body): Json<UpdateDeviceBody>,
) -> Result<Json<Device>, ApiError> {
    let changes = DeviceChanges { name: body.name, tags: body.tags, metadata: body.metadata };
    Ok(Json(state.service.update_device(&id, changes).await?))
}

/// Deletes a device with its credentials and presence.
#[utoipa::path(delete, path = "/api/v1/devices/{id}", params(("id" = String, Path)), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_device(State(state): State<RestState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    state.service.delete_device(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a new MQTT secret; the old one is refused for new connections at once.
#[utoipa::path(post, path = "/api/v1/devices/{id}/credentials", params(("id" = String, Path)), responses(
    (status = 200, body = Credentials), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn rotate_credentials(
    State(state): State<RestState>,
    Path(id): Path<String>,
) -> Result<Json<Credentials>, ApiError> {
    Ok(Json(state.service.rotate_credentials(&id).await?.into()))
}

/// Query of `GET /api/v1/devices/{id}/presence`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PresenceHistoryQuery {
    /// Changes listed (default 50, at most 200, all that are kept per device).
    limit: Option<u32>,
}

/// A device's presence history: when it went online and offline, newest first (the newest 200 changes are kept).
#[utoipa::path(get, path = "/api/v1/devices/{id}/presence", params(("id" = String, Path), PresenceHistoryQuery),
    responses((status = 200, body = Vec<PresenceEvent>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn presence_history(
    State(state): State<RestState>,
    Path(id): Path<String>,
    Query(query): Query<PresenceHistoryQuery>,
) -> Result<Json<Vec<PresenceEvent>>, ApiError> {
    Ok(Json(state.service.presence_history(&id, query.limit.unwrap_or(0)).await?))
}

/// Presence changes as server-sent events (`event: presence`, data: a PresenceChange).
#[utoipa::path(get, path = "/api/v1/presence/events", params(PresenceQuery), responses(
    (status = 200, description = "text/event-stream of PresenceChange", content_type = "text/event-stream", body = PresenceChange),
    (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn presence_events(
    State(state): State<RestState>,
    Query(query): Query<PresenceQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let changes =
        state.service.watch_presence(comma_list(query.device), query.include_current.unwrap_or(false)).await?;
    let events = ReceiverStream::new(changes).map(|change| {
        let event = match change {
            Ok(change) => Event::default().event("presence").json_data(&change),
            Err(err) => Event::default().event("error").json_data(ErrorBody { error: err.public_message() }),
        };
        // Serializing these plain structs cannot fail; if it somehow did, a comment line keeps the stream valid.
        Ok(event.unwrap_or_else(|_| Event::default().comment("unserializable event")))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// API tokens (without their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", params(TokenQuery), responses(
    (status = 200, body = Vec<ApiToken>), (status = 401, body = ErrorBody)))]
async fn list_tokens(
    State(state): State<RestState>,
    Query(query): Query<TokenQuery>,
) -> Result<Json<Vec<ApiToken>>, ApiError> {
    Ok(Json(state.service.list_tokens(query.include_revoked.unwrap_or(false)).await?))
}

/// Creates an API token (shown only here).
#[utoipa::path(post, path = "/api/v1/tokens", request_body = CreateTokenBody, responses(
    (status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create_token(State(state): State<RestState>, Json(body): Json<CreateTokenBody>) -> Result<Response, ApiError> {
    let issued = state.service.create_token(&body.name).await?;
    let body = CreatedToken { token: issued.token, secret: issued.secret.expose_secret().to_owned() };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Revokes an API token; requests with it are refused at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", params(("id" = String, Path)), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_token(State(state): State<RestState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    state.service.revoke_token(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Liveness: `ok` while the process serves HTTP (served by `ferrite_telemetry::metrics_router`).
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, body = String, content_type = "text/plain")))]
#[allow(dead_code)]
fn healthz() {}

/// Prometheus metrics of the whole process (served by `ferrite_telemetry::metrics_router`).
#[utoipa::path(get, path = "/metrics", security(()), responses((status = 200, body = String, content_type = "text/plain")))]
#[allow(dead_code)]
fn metrics() {}
