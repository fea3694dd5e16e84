//! The REST face: `/api/v1/devices/{id}/commands` and `/api/v1/commands/{id}` over [`CommandService`], their OpenAPI
//! document, and the HTTP status of each [`CommandError`] (`ferrite_api::http`).
//! The registry serves these routes behind its token check.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use ferrite_api::http::{ApiError, ErrorBody, Json, Path, Query};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::model::{Command, SendCommand, parse_timeout};
use crate::{CommandError, CommandService};

impl From<CommandError> for ApiError {
    fn from(err: CommandError) -> Self {
        err.log_if_internal();
        let status = match &err {
            CommandError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            CommandError::DeviceNotFound(_) | CommandError::CommandNotFound(_) => StatusCode::NOT_FOUND,
            CommandError::Unavailable(_) | CommandError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
            CommandError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.public_message())
    }
}

/// The routes `/api/v1/devices/{id}/commands` and `/api/v1/commands/{command_id}`, for an `ApiExtension`.
pub fn router(service: CommandService) -> Router {
    Router::new()
        .route("/api/v1/devices/{id}/commands", get(list_commands).post(send_command))
        .route("/api/v1/commands/{command_id}", get(get_command))
        .with_state(service)
}

/// The OpenAPI description of these routes, to merge into the registry's `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(paths(send_command, list_commands, get_command), components(schemas(SendBody, CommandView, ErrorBody)))]
struct ApiDoc;

/// A command to send.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SendBody {
    /// E.g. `ping`, `restart`, `set-interval`, `lights`.
    #[schema(example = "restart")]
    name: String,
    /// A JSON object passed to the device as `params`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Value,
    /// How long to wait for the answer: `10s` (default), `500ms`, or a number of seconds; at most 5 minutes.
    #[schema(value_type = Option<String>, example = "10s")]
    timeout: Option<Value>,
    /// Wait for the answer (default true). Without, or when the device is offline, the answer is 202 at once.
    wait: Option<bool>,
}

/// A command and its outcome.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CommandView {
    id: Uuid,
    device_id: String,
    name: String,
    #[schema(value_type = Object)]
    params: Value,
    /// `pending` (device offline; delivered when it reconnects), `sent`, `ok`, `error` or `timed_out`.
    state: String,
    /// The device's `result`, once it answered.
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    /// E.g. `10s`.
    timeout: String,
    created_at: DateTime<Utc>,
    /// When the answer arrived, or the wait timed out.
    completed_at: Option<DateTime<Utc>>,
}

impl From<Command> for CommandView {
    fn from(command: Command) -> Self {
        CommandView {
            id: command.id,
            device_id: command.device_id,
            name: command.name,
            params: command.params,
            state: command.state.as_str().to_owned(),
            result: command.result,
            timeout: humantime::format_duration(command.timeout).to_string(),
            created_at: command.created_at,
            completed_at: command.completed_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
}

/// Sends a command to a device and, by default, waits for its answer.
///
/// 200 with the outcome (`ok`, `error`, `timed_out`) after waiting; 202 at once with `sent` (`"wait": false`) or
/// `pending` (the device is offline: the broker delivers the command when its persistent session reconnects,
/// and the answer then updates the stored command).
#[utoipa::path(post, path = "/api/v1/devices/{id}/commands", params(("id" = String, Path)), request_body = SendBody,
    responses((status = 200, body = CommandView), (status = 202, body = CommandView), (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn send_command(
    State(service): State<CommandService>,
    Path(id): Path<String>,
    Json(body): Json<SendBody>,
) -> Result<Response, ApiError> {
    let timeout = match body.timeout {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(parse_timeout(&text)?),
        Some(Value::Number(seconds)) => Some(parse_timeout(&seconds.to_string())?),
        Some(other) => {
            return Err(CommandError::InvalidArgument(format!("invalid timeout {other}: expected e.g. \"10s\"")).into());
        }
    };
    let request =
        SendCommand { device_id: id, name: body.name, params: body.params, timeout, wait: body.wait.unwrap_or(true) };
    let command = service.send(request).await?;
    let status = if command.state.is_complete() { StatusCode::OK } else { StatusCode::ACCEPTED };
    let location = format!("/api/v1/commands/{}", command.id);
    Ok((status, [(header::LOCATION, location)], Json(CommandView::from(command))).into_response())
}

/// A device's commands, newest first.
#[utoipa::path(get, path = "/api/v1/devices/{id}/commands", params(("id" = String, Path), ListQuery), responses(
    (status = 200, body = Vec<CommandView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn list_commands(
    State(service): State<CommandService>,
    Path(id): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<CommandView>>, ApiError> {
    let limit = match query.limit {
        Some(0) => return Err(CommandError::InvalidArgument("limit must be at least 1".into()).into()),
        Some(limit) => limit,
        None => 0,
    };
    Ok(Json(service.list(&id, limit).await?.into_iter().map(CommandView::from).collect()))
}

/// One command and its outcome.
#[utoipa::path(get, path = "/api/v1/commands/{command_id}", params(("command_id" = String, Path)), responses(
    (status = 200, body = CommandView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn get_command(
    State(service): State<CommandService>,
    Path(id): Path<String>,
) -> Result<Json<CommandView>, ApiError> {
    Ok(Json(service.get(&id).await?.into()))
}
