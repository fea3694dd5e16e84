//! The REST face: `/api/v1/rules...` and `/api/v1/alerts` over [`RulesService`], their OpenAPI document, and the HTTP
//! status of each [`RulesError`] (`ferrite_api::http`). The registry serves these routes behind its token check.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use ferrite_api::http::{ApiError, ErrorBody, Json, Path, Query};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::model::{Alert, AlertFilter, Rule, RuleInput};
use crate::{RulesError, RulesService};

impl From<RulesError> for ApiError {
    fn from(err: RulesError) -> Self {
        err.log_if_internal();
        let status = match &err {
            RulesError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            RulesError::RuleNotFound(_) => StatusCode::NOT_FOUND,
            RulesError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
            RulesError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.public_message())
    }
}

/// The routes `/api/v1/rules`, `/api/v1/rules/{id}` and `/api/v1/alerts`, for an `ApiExtension`.
pub fn router(service: RulesService) -> Router {
    Router::new()
        .route("/api/v1/rules", get(list_rules).post(create_rule))
        .route("/api/v1/rules/{id}", get(get_rule).put(update_rule).delete(delete_rule))
        .route("/api/v1/alerts", get(list_alerts))
        .with_state(service)
}

/// The OpenAPI description of these routes, to merge into the registry's `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    paths(list_rules, create_rule, get_rule, update_rule, delete_rule, list_alerts),
    components(schemas(RuleBody, RuleView, AlertView, ErrorBody))
)]
struct ApiDoc;

/// A rule as a client writes it (create, or replace with PUT).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleBody {
    /// Defaults to e.g. `temperature > 30`.
    name: Option<String>,
    #[schema(example = "temperature")]
    metric: String,
    /// One of `>`, `>=`, `<`, `<=`, `==`, `!=`.
    #[schema(example = ">")]
    comparison: String,
    /// The threshold.
    #[schema(example = 30.0)]
    value: f64,
    /// How long the condition must hold (by the readings' timestamps) before the rule fires, e.g. `60s`, `5m`.
    #[serde(rename = "for")]
    #[schema(example = "60s")]
    for_duration: Option<String>,
    /// Only this device.
    device_id: Option<String>,
    /// Only devices carrying all these tags.
    #[serde(default)]
    tags: Vec<String>,
    /// `info`, `warning` (default) or `critical`.
    severity: Option<String>,
    /// Template with `{device}`, `{metric}`, `{value}`, `{threshold}`, `{comparison}`, `{rule}`, `{severity}`.
    #[schema(example = "{device} {metric} is {value} (> {threshold})")]
    message: Option<String>,
    /// Default true.
    enabled: Option<bool>,
}

impl TryFrom<RuleBody> for RuleInput {
    type Error = RulesError;
    fn try_from(body: RuleBody) -> Result<Self, Self::Error> {
        let for_duration = match body.for_duration.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(text) => parse_duration(text)?,
            None => Duration::ZERO,
        };
        Ok(RuleInput {
            name: body.name,
            metric: body.metric,
            comparison: body.comparison,
            threshold: body.value,
            for_duration,
            device_id: body.device_id,
            tags: body.tags,
            severity: body.severity,
            message: body.message,
            enabled: body.enabled.unwrap_or(true),
        })
    }
}

/// `60s`, `5m`, `1h 30m`, or a plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, RulesError> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|_| {
            RulesError::InvalidArgument(format!("invalid duration {text:?}: seconds must be zero or more"))
        });
    }
    humantime::parse_duration(text).map_err(|err| {
        RulesError::InvalidArgument(format!("invalid duration {text:?}: {err} (expected e.g. 60s or 5m)"))
    })
}

/// A stored rule.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct RuleView {
    id: Uuid,
    name: String,
    metric: String,
    comparison: String,
    value: f64,
    /// E.g. `1m`; `0s` when the rule fires at once.
    #[serde(rename = "for")]
    for_duration: String,
    device_id: Option<String>,
    tags: Vec<String>,
    severity: String,
    message: String,
    enabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Rule> for RuleView {
    fn from(rule: Rule) -> Self {
        let d = rule.definition;
        RuleView {
            id: rule.id,
            name: d.name,
            metric: d.metric,
            comparison: d.comparison.as_str().to_owned(),
            value: d.threshold,
            for_duration: humantime::format_duration(d.for_duration).to_string(),
            device_id: d.device_id,
            tags: d.tags,
            severity: d.severity.as_str().to_owned(),
            message: d.message,
            enabled: d.enabled,
            created_at: rule.created_at,
            updated_at: rule.updated_at,
        }
    }
}

/// One firing of a rule for one device.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct AlertView {
    id: Uuid,
    /// Absent once the rule is deleted.
    rule_id: Option<Uuid>,
    rule: String,
    device_id: String,
    metric: String,
    severity: String,
    /// `firing` or `resolved`.
    state: String,
    /// The reading that fired the rule.
    value: f64,
    threshold: f64,
    message: String,
    /// The timestamp of the reading that fired the rule.
    ts: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

impl From<Alert> for AlertView {
    fn from(alert: Alert) -> Self {
        AlertView {
            id: alert.id,
            rule_id: alert.rule_id,
            rule: alert.rule_name,
            device_id: alert.device_id,
            metric: alert.metric,
            severity: alert.severity,
            state: alert.state.as_str().to_owned(),
            value: alert.value,
            threshold: alert.threshold,
            message: alert.message,
            ts: alert.fired_at,
            resolved_at: alert.resolved_at,
        }
    }
}

/// Query of `GET /api/v1/alerts`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AlertQuery {
    /// `firing` or `resolved`; all when absent.
    state: Option<String>,
    /// Only this device.
    device: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
}

/// All rules, by name.
#[utoipa::path(get, path = "/api/v1/rules", responses((status = 200, body = Vec<RuleView>), (status = 401, body = ErrorBody)))]
async fn list_rules(State(service): State<RulesService>) -> Result<Json<Vec<RuleView>>, ApiError> {
    Ok(Json(service.list_rules(false).await?.into_iter().map(RuleView::from).collect()))
}

/// Creates a threshold rule; engines pick it up at once.
#[utoipa::path(post, path = "/api/v1/rules", request_body = RuleBody, responses(
    (status = 201, body = RuleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_rule(State(service): State<RulesService>, Json(body): Json<RuleBody>) -> Result<Response, ApiError> {
    let rule = service.create_rule(body.try_into()?).await?;
    let location = format!("/api/v1/rules/{}", rule.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(RuleView::from(rule))).into_response())
}

/// One rule.
#[utoipa::path(get, path = "/api/v1/rules/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = RuleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn get_rule(State(service): State<RulesService>, Path(id): Path<String>) -> Result<Json<RuleView>, ApiError> {
    Ok(Json(service.get_rule(&id).await?.into()))
}

/// Replaces a rule; when its condition changes (or it is disabled) its firing alerts are resolved.
#[utoipa::path(put, path = "/api/v1/rules/{id}", params(("id" = String, Path)), request_body = RuleBody, responses(
    (status = 200, body = RuleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_rule(
    State(service): State<RulesService>,
    Path(id): Path<String>,
    Json(body): Json<RuleBody>,
) -> Result<Json<RuleView>, ApiError> {
    Ok(Json(service.update_rule(&id, body.try_into()?).await?.into()))
}

/// Deletes a rule; its firing alerts are resolved, its alert history is kept.
#[utoipa::path(delete, path = "/api/v1/rules/{id}", params(("id" = String, Path)), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_rule(State(service): State<RulesService>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    service.delete_rule(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Alerts, newest first.
#[utoipa::path(get, path = "/api/v1/alerts", params(AlertQuery), responses(
    (status = 200, body = Vec<AlertView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_alerts(
    State(service): State<RulesService>,
    Query(query): Query<AlertQuery>,
) -> Result<Json<Vec<AlertView>>, ApiError> {
    let filter = AlertFilter {
        state: query.state.as_deref().filter(|s| !s.is_empty()).map(str::parse).transpose()?,
        device_id: query.device.filter(|d| !d.is_empty()),
        limit: match query.limit {
            Some(0) => return Err(RulesError::InvalidArgument("limit must be at least 1".into()).into()),
            Some(limit) => limit,
            None => 0,
        },
    };
    Ok(Json(service.list_alerts(&filter).await?.into_iter().map(AlertView::from).collect()))
}
