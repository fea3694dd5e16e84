//! The REST face: `GET /api/v1/devices/{id}/telemetry` and `GET /api/v1/devices/{id}/latest` over
//! [`TelemetryService`], their OpenAPI description, and the HTTP status of each [`QueryError`] (`ferrite_api::http`).
//!
//! The registry serves these routes behind its token check (an [`ferrite_api::ApiExtension`]).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{DateTime, Utc};
pub use ferrite_api::http::ErrorBody;
use ferrite_api::http::{ApiError, Path, Query};
use ferrite_core::DeviceId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::model::{Aggregate, LatestValue, Point, QueryParams, RangeQuery, parse_bucket, parse_instant};
use crate::{QueryError, TelemetryService};

impl From<QueryError> for ApiError {
    fn from(err: QueryError) -> Self {
        err.log_if_internal();
        let status = match &err {
            QueryError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            QueryError::DeviceNotFound(_) => StatusCode::NOT_FOUND,
            QueryError::LiveUnavailable | QueryError::LiveRefused(_) | QueryError::Database(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.public_message())
    }
}

/// The telemetry routes with their full paths, ready to merge into the registry's router.
pub(crate) fn router(service: TelemetryService) -> Router {
    Router::new()
        .route("/api/v1/devices/{id}/telemetry", get(telemetry))
        .route("/api/v1/devices/{id}/latest", get(latest))
        .with_state(service)
}

/// The OpenAPI description of these routes, merged into the registry's `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    paths(telemetry, latest),
    components(schemas(TelemetryPage, LatestPage, Point, LatestValue, Aggregate, ErrorBody))
)]
struct ApiDoc;

/// Query of `GET /api/v1/devices/{id}/telemetry`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TelemetryQuery {
    /// One metric; all metrics of the device when absent.
    metric: Option<String>,
    /// Start (inclusive): RFC 3339 or epoch milliseconds; default `to` minus one hour.
    from: Option<String>,
    /// End (exclusive): RFC 3339 or epoch milliseconds; default now.
    to: Option<String>,
    /// Bucket width (`10s`, `1m`, `1h`, `1d`); raw readings when absent. At most 10,000 buckets in the range.
    bucket: Option<String>,
    /// Aggregate per bucket: avg (default), min, max, sum, count, first, last. Only with `bucket`.
    agg: Option<String>,
    /// Points per page (default 1000, at most 10000).
    limit: Option<u32>,
    /// `nextCursor` of the previous page of the same query.
    cursor: Option<String>,
}

/// One page of readings or buckets, in (metric, ts) order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct TelemetryPage {
    device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metric: Option<String>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// The bucket width in humantime form (`1m`); absent for raw readings.
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agg: Option<Aggregate>,
    points: Vec<Point>,
    /// Pass it as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// The newest reading of every metric of a device, sorted by metric.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct LatestPage {
    device_id: String,
    values: Vec<LatestValue>,
}

/// A device's readings over a time range, raw or aggregated per bucket (computed in PostgreSQL), a page at a time.
///
/// A device that is registered (or has sent readings) but has none in the range gets an empty list;
/// a device that is neither is a 404.
#[utoipa::path(get, path = "/api/v1/devices/{id}/telemetry", params(("id" = String, Path), TelemetryQuery),
    responses((status = 200, body = TelemetryPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn telemetry(
    State(service): State<TelemetryService>,
    Path(id): Path<String>,
    Query(query): Query<TelemetryQuery>,
) -> Result<axum::Json<TelemetryPage>, ApiError> {
    let query = range_query(id, query, Utc::now())?;
    let page = service.query(&query).await?;
    Ok(axum::Json(TelemetryPage {
        device_id: query.device.to_string(),
        metric: query.metric.clone(),
        from: query.from,
        to: query.to,
        bucket: query
            .bucket
            .and_then(|bucket| bucket.width.to_std().ok())
            .map(|width| humantime::format_duration(width).to_string()),
        agg: query.bucket.map(|bucket| bucket.agg),
        points: page.points,
        next_cursor: page.next_cursor,
    }))
}

/// Validates the path and query string of a telemetry request; `now` is the default end of the range.
fn range_query(id: String, query: TelemetryQuery, now: DateTime<Utc>) -> Result<RangeQuery, QueryError> {
    let given = |value: Option<String>| value.filter(|value| !value.trim().is_empty());
    let params = QueryParams {
        device: id,
        metric: given(query.metric),
        from: given(query.from).map(|text| parse_instant("from", &text)).transpose()?,
        to: given(query.to).map(|text| parse_instant("to", &text)).transpose()?,
        bucket: given(query.bucket).map(|text| parse_bucket(&text)).transpose()?,
        agg: given(query.agg).map(|text| text.parse()).transpose()?,
        limit: query.limit,
        cursor: given(query.cursor),
    };
    RangeQuery::new(params, now)
}

/// The newest reading of every metric of a device (from the latest-values table, not the readings).
#[utoipa::path(get, path = "/api/v1/devices/{id}/latest", params(("id" = String, Path)),
    responses((status = 200, body = LatestPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn latest(
    State(service): State<TelemetryService>,
    Path(id): Path<String>,
) -> Result<axum::Json<LatestPage>, ApiError> {
    let device = DeviceId::new(id).map_err(QueryError::from)?;
    let values = service.latest(&device).await?;
    Ok(axum::Json(LatestPage { device_id: device.to_string(), values }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Query-string values as an attacker sends them: numbers past every range, NUL, separators, far dates.
    fn hostile() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            ".{0,60}",
            "-?[0-9]{1,30}",
            "[0-9]{1,22}(ns|us|ms|s|m|h|d|w|y|years)",
            Just("\0".to_owned()),
            Just("+275760-09-13T00:00:00Z".to_owned()),
            Just("-262143-01-01T00:00:00Z".to_owned()),
            Just("9999-12-31T23:59:59.999999999Z".to_owned()),
            Just(i64::MAX.to_string()),
            Just(i64::MIN.to_string()),
            Just("YjF8ODIxMDI2Njg3Njc5OTk5ODk5OXx0ZW1wZXJhdHVyZQ".to_owned()),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the query string says, the request is validated or refused as a 400, never a panic.
        #[test]
        fn any_query_string_is_valid_or_a_400(
            id in prop_oneof!["[a-z0-9]{1,8}", ".{0,70}"],
            metric in hostile(), from in hostile(), to in hostile(), bucket in hostile(), agg in hostile(),
            limit in prop::option::of(any::<u32>()), cursor in hostile(),
        ) {
            let query = TelemetryQuery { metric, from, to, bucket, agg, limit, cursor };
            if let Err(err) = range_query(id, query, Utc::now()) {
                prop_assert_eq!(ApiError::from(err).status(), StatusCode::BAD_REQUEST);
            }
        }
    }
}
