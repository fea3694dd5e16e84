//! The gRPC face: `ferrite.v1.Commands` over [`CommandService`], and the one conversion of [`CommandError`] into a [`Status`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use ferrite_api::ApiGuard;
use ferrite_proto::v1 as pb;
use ferrite_proto::v1::commands_server::{Commands, CommandsServer};
use prost_types::value::Kind;
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::model::{Command, SendCommand};
use crate::{CommandError, CommandService};

impl From<CommandError> for Status {
    fn from(err: CommandError) -> Self {
        err.log_if_internal();
        let message = err.public_message();
        match err {
            CommandError::InvalidArgument(_) => Status::invalid_argument(message),
            CommandError::DeviceNotFound(_) | CommandError::CommandNotFound(_) => Status::not_found(message),
            CommandError::Unavailable(_) | CommandError::Database(_) => Status::unavailable(message),
            CommandError::Internal(_) => Status::internal(message),
        }
    }
}

/// `ferrite.v1.Commands`, checking API tokens with the registry's guard.
#[derive(Clone)]
pub struct CommandsGrpc {
    service: CommandService,
    guard: ApiGuard,
}

/// The gRPC service for an `ApiExtension`.
pub fn grpc(service: CommandService, guard: ApiGuard) -> CommandsServer<CommandsGrpc> {
    CommandsServer::new(CommandsGrpc { service, guard })
}

#[tonic::async_trait]
impl Commands for CommandsGrpc {
    async fn send(&self, request: Request<pb::SendCommandRequest>) -> Result<Response<pb::Command>, Status> {
        self.guard.check(&request).await?;
        let request = request.into_inner();
        let timeout = match request.timeout {
            Some(timeout) => Some(
                Duration::try_from(timeout)
                    .map_err(|_| CommandError::InvalidArgument("timeout must not be negative".into()))?,
            ),
            None => None,
        };
        let send = SendCommand {
            device_id: request.device_id,
            name: request.name,
            params: request.params.map(struct_to_json).unwrap_or(Value::Null),
            timeout,
            wait: request.wait.unwrap_or(true),
        };
        Ok(Response::new(command_to_pb(self.service.send(send).await?)))
    }

    async fn get(&self, request: Request<pb::GetCommandRequest>) -> Result<Response<pb::Command>, Status> {
        self.guard.check(&request).await?;
        Ok(Response::new(command_to_pb(self.service.get(&request.get_ref().id).await?)))
    }

    async fn list(
        &self,
        request: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        self.guard.check(&request).await?;
        let request = request.into_inner();
        let commands = self.service.list(&request.device_id, request.limit).await?;
        Ok(Response::new(pb::ListCommandsResponse { commands: commands.into_iter().map(command_to_pb).collect() }))
    }
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    // Sub-second nanos of a chrono time are below 2e9, so they fit i32.
    prost_types::Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

fn command_to_pb(command: Command) -> pb::Command {
    let params = match json_to_value(command.params).kind {
        Some(Kind::StructValue(object)) => object,
        _ => prost_types::Struct::default(),
    };
    pb::Command {
        id: command.id.to_string(),
        device_id: command.device_id,
        name: command.name,
        params: Some(params),
        state: command.state.as_str().to_owned(),
        result: command.result.map(json_to_value),
        // At most the service's maximum timeout, so it converts.
        timeout: prost_types::Duration::try_from(command.timeout).ok(),
        created_at: Some(timestamp(command.created_at)),
        completed_at: command.completed_at.map(timestamp),
    }
}

fn json_to_value(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        // protobuf's Value has only doubles; integers beyond 2^53 lose precision, as in any JSON-to-Struct mapping.
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.into_iter().map(json_to_value).collect() })
        }
        Value::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields.into_iter().map(|(key, value)| (key, json_to_value(value))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn struct_to_json(object: prost_types::Struct) -> Value {
    Value::Object(object.fields.into_iter().map(|(key, value)| (key, value_to_json(value))).collect())
}

fn value_to_json(value: prost_types::Value) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        // Whole numbers go to the device as JSON integers (`{"seconds": 5}`, not `5.0`).
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_992.0 => Value::from(n as i64),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n).map(Value::Number).unwrap_or(Value::Null),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => Value::Array(list.values.into_iter().map(value_to_json).collect()),
        Some(Kind::StructValue(object)) => struct_to_json(object),
    }
}
