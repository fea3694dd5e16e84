//! The gRPC face: `ferrite.v1.Telemetry` over [`TelemetryService`] and [`LiveFeed`], and the one conversion of
//! [`QueryError`] into a [`Status`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use ferrite_api::ApiGuard;
use ferrite_core::{DeviceId, Reading};
use ferrite_mqtt::Queue;
use ferrite_proto::v1 as pb;
use ferrite_proto::v1::telemetry_server::Telemetry;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::live::LiveSubscription;
use crate::model::{Aggregate, QueryParams, RangeQuery};
use crate::{LiveFeed, QueryError, TelemetryService};

impl From<QueryError> for Status {
    fn from(err: QueryError) -> Self {
        err.log_if_internal();
        let message = err.public_message();
        match err {
            QueryError::InvalidArgument(_) => Status::invalid_argument(message),
            QueryError::DeviceNotFound(_) => Status::not_found(message),
            QueryError::LiveUnavailable | QueryError::LiveRefused(_) | QueryError::Database(_) => {
                Status::unavailable(message)
            }
            QueryError::Internal(_) => Status::internal(message),
        }
    }
}

/// Readings a live stream takes from its queue at a time (under one lock).
const STREAM_BATCH: usize = 64;

/// `ferrite.v1.Telemetry`, behind the registry's token check.
#[derive(Clone)]
pub struct GrpcFace {
    service: TelemetryService,
    live: Option<LiveFeed>,
    guard: ApiGuard,
}

impl GrpcFace {
    pub(crate) fn new(service: TelemetryService, live: Option<LiveFeed>, guard: ApiGuard) -> Self {
        GrpcFace { service, live, guard }
    }
}

type ReadingStream = Pin<Box<dyn Stream<Item = Result<pb::StreamReading, Status>> + Send>>;

#[tonic::async_trait]
impl Telemetry for GrpcFace {
    async fn query(&self, request: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResponse>, Status> {
        self.guard.check(&request).await?;
        let query = range_query(request.into_inner(), Utc::now())?;
        let page = self.service.query(&query).await?;
        Ok(Response::new(pb::QueryResponse {
            points: page
                .points
                .into_iter()
                .map(|point| pb::TelemetryPoint {
                    metric: point.metric,
                    ts: Some(timestamp(point.ts)),
                    value: point.value,
                })
                .collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn latest(&self, request: Request<pb::LatestRequest>) -> Result<Response<pb::LatestResponse>, Status> {
        self.guard.check(&request).await?;
        let device = DeviceId::new(request.into_inner().device_id).map_err(QueryError::from)?;
        let values = self.service.latest(&device).await?;
        Ok(Response::new(pb::LatestResponse {
            values: values
                .into_iter()
                .map(|value| pb::LatestValue {
                    metric: value.metric,
                    reading: Some(pb::Reading {
                        value: value.value,
                        ts: Some(timestamp(value.ts)),
                        unit: value.unit.unwrap_or_default(),
                    }),
                })
                .collect(),
        }))
    }

    type StreamStream = ReadingStream;

    async fn stream(&self, request: Request<pb::StreamRequest>) -> Result<Response<Self::StreamStream>, Status> {
        self.guard.check(&request).await?;
        let request = request.into_inner();
        let device = DeviceId::new(request.device_id).map_err(QueryError::from)?;
        let metric = Some(request.metric).filter(|metric| !metric.is_empty());
        if let Some(metric) = &metric
            && !ferrite_core::device::is_valid_name(metric)
        {
            return Err(QueryError::invalid(format!("invalid metric name {metric:?}")).into());
        }
        let live = self.live.as_ref().ok_or(QueryError::LiveUnavailable)?;
        let LiveSubscription { readings, closed, lease } = live.subscribe(&device).await?;
        let stream = queued_readings(readings).take_until(closed.cancelled_owned()).filter_map(move |reading| {
            // The lease lives as long as the stream: dropping the stream releases the subscription.
            let _lease = &lease;
            let out = metric.as_ref().is_none_or(|metric| *metric == reading.metric).then(|| {
                Ok(pb::StreamReading {
                    device_id: reading.device.as_str().to_owned(),
                    metric: reading.metric.clone(),
                    reading: Some(pb::Reading {
                        value: reading.value,
                        ts: Some(timestamp(reading.ts)),
                        unit: reading.unit.clone().unwrap_or_default(),
                    }),
                })
            });
            std::future::ready(out)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A stream's queued readings as a `Stream`, oldest first; it ends only when dropped (the caller ends it on shutdown).
fn queued_readings(queue: Arc<Queue<Arc<Reading>>>) -> impl Stream<Item = Arc<Reading>> {
    futures::stream::unfold((queue, VecDeque::new()), |(queue, mut taken)| async move {
        loop {
            if let Some(reading) = taken.pop_front() {
                return Some((reading, (queue, taken)));
            }
            // A push wakes us only when the queue turns from empty to not empty, so look before waiting.
            queue.take(STREAM_BATCH, |reading| taken.push_back(reading));
            if taken.is_empty() {
                queue.ready().await;
            }
        }
    })
}

/// Validates a `Query` request; `now` is the default end of the range.
fn range_query(request: pb::QueryRequest, now: DateTime<Utc>) -> Result<RangeQuery, QueryError> {
    let agg = match pb::Aggregation::try_from(request.agg) {
        Ok(pb::Aggregation::Unspecified) => None,
        Ok(pb::Aggregation::Avg) => Some(Aggregate::Avg),
        Ok(pb::Aggregation::Min) => Some(Aggregate::Min),
        Ok(pb::Aggregation::Max) => Some(Aggregate::Max),
        Ok(pb::Aggregation::Sum) => Some(Aggregate::Sum),
        Ok(pb::Aggregation::Count) => Some(Aggregate::Count),
        Ok(pb::Aggregation::First) => Some(Aggregate::First),
        Ok(pb::Aggregation::Last) => Some(Aggregate::Last),
        Err(_) => return Err(QueryError::invalid(format!("unknown agg {}", request.agg))),
    };
    let params = QueryParams {
        device: request.device_id,
        metric: Some(request.metric),
        from: request.from.map(|ts| from_timestamp("from", ts)).transpose()?,
        to: request.to.map(|ts| from_timestamp("to", ts)).transpose()?,
        bucket: request.bucket.map(from_duration).transpose()?,
        agg,
        limit: Some(request.limit),
        cursor: Some(request.cursor),
    };
    RangeQuery::new(params, now)
}

fn from_timestamp(name: &str, ts: prost_types::Timestamp) -> Result<DateTime<Utc>, QueryError> {
    let nanos = u32::try_from(ts.nanos).ok().filter(|nanos| *nanos < 1_000_000_000);
    nanos
        .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
        .ok_or_else(|| QueryError::invalid(format!("invalid {name} timestamp")))
}

fn from_duration(duration: prost_types::Duration) -> Result<TimeDelta, QueryError> {
    let invalid = || QueryError::invalid("invalid bucket duration");
    if duration.seconds < 0 || duration.nanos < 0 || duration.nanos >= 1_000_000_000 {
        return Err(invalid());
    }
    let seconds = TimeDelta::try_seconds(duration.seconds).ok_or_else(invalid)?;
    seconds.checked_add(&TimeDelta::nanoseconds(i64::from(duration.nanos))).ok_or_else(invalid)
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    // Sub-second nanos of a chrono time are below 2e9, so they fit i32.
    prost_types::Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
        prop::option::of(
            (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the request's fields hold, it is validated or refused as INVALID_ARGUMENT, never a panic.
        #[test]
        fn any_request_is_valid_or_invalid_argument(
            device_id in prop_oneof!["[a-z0-9]{1,8}", ".{0,70}"],
            metric in prop_oneof!["[a-z]{0,8}", ".{0,70}"],
            from in timestamp(), to in timestamp(),
            bucket in prop::option::of((any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos })),
            agg in any::<i32>(), limit in any::<u32>(), cursor in ".{0,300}",
        ) {
            let request = pb::QueryRequest { device_id, metric, from, to, bucket, agg: agg % 10, limit, cursor };
            if let Err(err) = range_query(request, Utc::now()) {
                prop_assert_eq!(Status::from(err).code(), tonic::Code::InvalidArgument);
            }
        }
    }
}
