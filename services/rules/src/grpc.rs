//! The gRPC face: `ferrite.v1.Rules` over [`RulesService`], and the one conversion of [`RulesError`] into a [`Status`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use ferrite_api::ApiGuard;
use ferrite_proto::v1 as pb;
use ferrite_proto::v1::rules_server::{Rules, RulesServer};
use tonic::{Request, Response, Status};

use crate::model::{Alert, AlertFilter, Rule, RuleInput};
use crate::{RulesError, RulesService};

impl From<RulesError> for Status {
    fn from(err: RulesError) -> Self {
        err.log_if_internal();
        let message = err.public_message();
        match err {
            RulesError::InvalidArgument(_) => Status::invalid_argument(message),
            RulesError::RuleNotFound(_) => Status::not_found(message),
            RulesError::Database(_) => Status::unavailable(message),
            RulesError::Internal(_) => Status::internal(message),
        }
    }
}

/// `ferrite.v1.Rules`, checking API tokens with the registry's guard.
#[derive(Clone)]
pub struct RulesGrpc {
    service: RulesService,
    guard: ApiGuard,
}

/// The gRPC service for an `ApiExtension`.
pub fn grpc(service: RulesService, guard: ApiGuard) -> RulesServer<RulesGrpc> {
    RulesServer::new(RulesGrpc { service, guard })
}

#[tonic::async_trait]
impl Rules for RulesGrpc {
    async fn create_rule(&self, request: Request<pb::CreateRuleRequest>) -> Result<Response<pb::Rule>, Status> {
        self.guard.check(&request).await?;
        let input = spec_to_input(request.into_inner().spec)?;
        Ok(Response::new(rule_to_pb(self.service.create_rule(input).await?)))
    }

    async fn get_rule(&self, request: Request<pb::GetRuleRequest>) -> Result<Response<pb::Rule>, Status> {
        self.guard.check(&request).await?;
        Ok(Response::new(rule_to_pb(self.service.get_rule(&request.get_ref().id).await?)))
    }

    async fn list_rules(
        &self,
        request: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        self.guard.check(&request).await?;
        let rules = self.service.list_rules(false).await?;
        Ok(Response::new(pb::ListRulesResponse { rules: rules.into_iter().map(rule_to_pb).collect() }))
    }

    async fn update_rule(&self, request: Request<pb::UpdateRuleRequest>) -> Result<Response<pb::Rule>, Status> {
        self.guard.check(&request).await?;
        let request = request.into_inner();
        let input = spec_to_input(request.spec)?;
        Ok(Response::new(rule_to_pb(self.service.update_rule(&request.id, input).await?)))
    }

    async fn delete_rule(
        &self,
        request: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::DeleteRuleResponse>, Status> {
        self.guard.check(&request).await?;
        self.service.delete_rule(&request.get_ref().id).await?;
        Ok(Response::new(pb::DeleteRuleResponse {}))
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        self.guard.check(&request).await?;
        let request = request.into_inner();
        let filter = AlertFilter {
            state: Some(request.state).filter(|s| !s.is_empty()).map(|s| s.parse()).transpose()?,
            device_id: Some(request.device_id).filter(|d| !d.is_empty()),
            limit: request.limit,
        };
        let alerts = self.service.list_alerts(&filter).await?;
        Ok(Response::new(pb::ListAlertsResponse { alerts: alerts.into_iter().map(alert_to_pb).collect() }))
    }
}

fn spec_to_input(spec: Option<pb::RuleSpec>) -> Result<RuleInput, RulesError> {
    let spec = spec.ok_or_else(|| RulesError::InvalidArgument("spec is required".into()))?;
    let for_duration = match spec.for_duration {
        Some(duration) => Duration::try_from(duration)
            .map_err(|_| RulesError::InvalidArgument("for_duration must be zero or more".into()))?,
        None => Duration::ZERO,
    };
    Ok(RuleInput {
        name: Some(spec.name),
        metric: spec.metric,
        comparison: spec.comparison,
        threshold: spec.value,
        for_duration,
        device_id: Some(spec.device_id),
        tags: spec.tags,
        severity: Some(spec.severity),
        message: Some(spec.message),
        enabled: spec.enabled,
    })
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    // Sub-second nanos of a chrono time are below 2e9, so they fit i32.
    prost_types::Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

fn rule_to_pb(rule: Rule) -> pb::Rule {
    let d = rule.definition;
    pb::Rule {
        id: rule.id.to_string(),
        spec: Some(pb::RuleSpec {
            name: d.name,
            metric: d.metric,
            comparison: d.comparison.as_str().to_owned(),
            value: d.threshold,
            // At most a week (validated), so it converts.
            for_duration: prost_types::Duration::try_from(d.for_duration).ok(),
            device_id: d.device_id.unwrap_or_default(),
            tags: d.tags,
            severity: d.severity.as_str().to_owned(),
            message: d.message,
            enabled: d.enabled,
        }),
        created_at: Some(timestamp(rule.created_at)),
        updated_at: Some(timestamp(rule.updated_at)),
    }
}

fn alert_to_pb(alert: Alert) -> pb::Alert {
    pb::Alert {
        id: alert.id.to_string(),
        rule_id: alert.rule_id.map(|id| id.to_string()).unwrap_or_default(),
        rule_name: alert.rule_name,
        device_id: alert.device_id,
        metric: alert.metric,
        severity: alert.severity,
        state: alert.state.as_str().to_owned(),
        value: alert.value,
        threshold: alert.threshold,
        message: alert.message,
        fired_at: Some(timestamp(alert.fired_at)),
        resolved_at: alert.resolved_at.map(timestamp),
    }
}
