//! The gRPC face: `ferrite.v1.DeviceRegistry` and `ferrite.v1.ApiTokens` over [`RegistryService`],
//! and the one conversion of [`RegistryError`] into a [`Status`].

use std::pin::Pin;

use chrono::{DateTime, Utc};
use ferrite_proto::v1 as pb;
use ferrite_proto::v1::api_tokens_server::ApiTokens;
use ferrite_proto::v1::device_registry_server::DeviceRegistry;
use futures::{Stream, StreamExt};
use secrecy::ExposeSecret;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::model::{
    ApiToken, Device, DeviceChanges, DeviceFilter, IssuedCredentials, NewDevice, PageRequest, PresenceChange,
};
use crate::{RegistryError, RegistryService};
use ferrite_api::ApiGuard;

impl From<RegistryError> for Status {
    fn from(err: RegistryError) -> Self {
        err.log_if_internal();
        let message = err.public_message();
        match err {
            RegistryError::InvalidArgument(_) => Status::invalid_argument(message),
            RegistryError::DeviceNotFound(_) | RegistryError::TokenNotFound(_) => Status::not_found(message),
            RegistryError::DeviceExists(_) => Status::already_exists(message),
            RegistryError::Unauthenticated => Status::unauthenticated(message),
            // The watcher may simply watch again.
            RegistryError::Lagged(_) => Status::aborted(message),
            RegistryError::Database(_) => Status::unavailable(message),
            RegistryError::Internal(_) | RegistryError::Bind { .. } | RegistryError::InvalidConfig(_) => {
                Status::internal(message)
            }
        }
    }
}

/// Both gRPC services share the domain service and the token check.
#[derive(Clone)]
pub(crate) struct GrpcFace {
    service: RegistryService,
    guard: ApiGuard,
}

impl GrpcFace {
    pub(crate) fn new(service: RegistryService, guard: ApiGuard) -> Self {
        GrpcFace { service, guard }
    }

    async fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.guard.check(request).await
    }
}

type PresenceStream = Pin<Box<dyn Stream<Item = Result<pb::PresenceEvent, Status>> + Send>>;

#[tonic::async_trait]
impl DeviceRegistry for GrpcFace {
    async fn create_device(
        &self,
        request: Request<pb::CreateDeviceRequest>,
    ) -> Result<Response<pb::CreateDeviceResponse>, Status> {
        self.authorize(&request).await?;
        let request = request.into_inner();
        let new = NewDevice {
            id: request.id,
            name: Some(request.name),
            tags: request.tags,
            metadata: request.metadata.map(struct_to_json).unwrap_or(serde_json::Value::Null),
        };
        let (device, credentials) = self.service.create_device(new).await?;
        Ok(Response::new(pb::CreateDeviceResponse {
            device: Some(device_to_pb(device)),
            credentials: Some(credentials_to_pb(credentials)),
        }))
    }

    async fn get_device(&self, request: Request<pb::GetDeviceRequest>) -> Result<Response<pb::Device>, Status> {
        self.authorize(&request).await?;
        let device = self.service.get_device(&request.get_ref().id).await?;
        Ok(Response::new(device_to_pb(device)))
    }

    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        self.authorize(&request).await?;
        let request = request.into_inner();
        let online = match request.presence() {
            pb::PresenceFilter::Unspecified => None,
            pb::PresenceFilter::Online => Some(true),
            pb::PresenceFilter::Offline => Some(false),
        };
        let filter = DeviceFilter {
            tags: request.tags,
            online,
            id_prefix: Some(request.id_prefix).filter(|prefix| !prefix.is_empty()),
        };
        let page =
            PageRequest { size: request.page_size, cursor: Some(request.page_token).filter(|token| !token.is_empty()) };
        let page = self.service.list_devices(&filter, &page).await?;
        Ok(Response::new(pb::ListDevicesResponse {
            devices: page.items.into_iter().map(device_to_pb).collect(),
            next_page_token: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn update_device(&self, request: Request<pb::UpdateDeviceRequest>) -> Result<Response<pb::Device>, Status> {
        self.authorize(&request).await?;
        let request = request.into_inner();
        let changes = DeviceChanges {
            name: request.name.map(|name| Some(name).filter(|name| !name.is_empty())),
            tags: request.tags.map(|tags| tags.tags),
            metadata: request.metadata.map(struct_to_json),
        };
        let device = self.service.update_device(&request.id, changes).await?;
        Ok(Response::new(device_to_pb(device)))
    }

    async fn delete_device(
        &self,
        request: Request<pb::DeleteDeviceRequest>,
    ) -> Result<Response<pb::DeleteDeviceResponse>, Status> {
        self.authorize(&request).await?;
        self.service.delete_device(&request.get_ref().id).await?;
        Ok(Response::new(pb::DeleteDeviceResponse {}))
    }

    async fn rotate_credentials(
        &self,
        request: Request<pb::RotateCredentialsRequest>,
    ) -> Result<Response<pb::DeviceCredentials>, Status> {
        self.authorize(&request).await?;
        let credentials = self.service.rotate_credentials(&request.get_ref().id).await?;
        Ok(Response::new(credentials_to_pb(credentials)))
    }

    type WatchPresenceStream = PresenceStream;

    async fn watch_presence(
        &self,
        request: Request<pb::WatchPresenceRequest>,
    ) -> Result<Response<Self::WatchPresenceStream>, Status> {
        self.authorize(&request).await?;
        let request = request.into_inner();
        let changes = self.service.watch_presence(request.device_ids, request.include_current).await?;
        let stream = ReceiverStream::new(changes).map(|change| change.map(presence_to_pb).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl ApiTokens for GrpcFace {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.authorize(&request).await?;
        let issued = self.service.create_token(&request.get_ref().name).await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token_to_pb(issued.token)),
            secret: issued.secret.expose_secret().to_owned(),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.authorize(&request).await?;
        let tokens = self.service.list_tokens(request.get_ref().include_revoked).await?;
        Ok(Response::new(pb::ListTokensResponse { tokens: tokens.into_iter().map(token_to_pb).collect() }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.authorize(&request).await?;
        self.service.revoke_token(&request.get_ref().id).await?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    // Sub-second nanos of a chrono time are below 2e9, so they fit i32.
    prost_types::Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

fn device_to_pb(device: Device) -> pb::Device {
    pb::Device {
        id: device.id,
        name: device.name.unwrap_or_default(),
        tags: device.tags,
        metadata: Some(json_to_struct(device.metadata)),
        auto_registered: device.auto_registered,
        created_at: Some(timestamp(device.created_at)),
        updated_at: Some(timestamp(device.updated_at)),
        presence: device.presence.map(|presence| pb::Presence {
            online: presence.online,
            last_seen: Some(timestamp(presence.last_seen)),
            changed_at: Some(timestamp(presence.changed_at)),
        }),
        has_credentials: device.has_credentials,
    }
}

fn credentials_to_pb(credentials: IssuedCredentials) -> pb::DeviceCredentials {
    pb::DeviceCredentials {
        username: credentials.device_id.clone(),
        device_id: credentials.device_id,
        secret: credentials.secret.expose_secret().to_owned(),
    }
}

fn presence_to_pb(change: PresenceChange) -> pb::PresenceEvent {
    pb::PresenceEvent {
        device_id: change.device_id,
        online: change.online,
        changed_at: Some(timestamp(change.changed_at)),
        last_seen: Some(timestamp(change.last_seen)),
    }
}

fn token_to_pb(token: ApiToken) -> pb::ApiToken {
    pb::ApiToken {
        id: token.id.to_string(),
        name: token.name,
        created_at: Some(timestamp(token.created_at)),
        revoked_at: token.revoked_at.map(timestamp),
    }
}

/// A JSON object as a protobuf `Struct`; anything else becomes an empty one (metadata is always an object).
pub(crate) fn json_to_struct(value: serde_json::Value) -> prost_types::Struct {
    match json_to_value(value).kind {
        Some(prost_types::value::Kind::StructValue(object)) => object,
        _ => prost_types::Struct::default(),
    }
}

fn json_to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        // protobuf's Struct has only doubles; integers beyond 2^53 lose precision, as in any JSON-to-Struct mapping.
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.into_iter().map(json_to_value).collect() })
        }
        serde_json::Value::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields.into_iter().map(|(key, value)| (key, json_to_value(value))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A protobuf `Struct` as a JSON object.
pub(crate) fn struct_to_json(object: prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(object.fields.into_iter().map(|(key, value)| (key, value_to_json(value))).collect())
}

fn value_to_json(value: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::NumberValue(n)) => number_to_json(n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(list.values.into_iter().map(value_to_json).collect()),
        Some(Kind::StructValue(object)) => struct_to_json(object),
    }
}

/// Whole numbers come back as JSON integers, so `{"floor": 2}` survives a trip through gRPC unchanged.
fn number_to_json(n: f64) -> serde_json::Value {
    // 2^53: the largest range in which every integer is exact in a double.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT {
        // In range and whole, so the cast is exact.
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_descriptors_include_imports() {
        use ferrite_proto::prost::Message;
        let set = prost_types::FileDescriptorSet::decode(ferrite_proto::FILE_DESCRIPTOR_SET)
            .expect("build.rs encodes a valid set");
        let names: Vec<&str> = set.file.iter().filter_map(|file| file.name.as_deref()).collect();
        // Tools resolve google.protobuf.Struct and Timestamp through reflection too, so the imports must be there.
        for expected in [
            "ferrite/v1/registry.proto",
            "ferrite/v1/telemetry.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/timestamp.proto",
        ] {
            assert!(names.contains(&expected), "{expected} missing from {names:?}");
        }
    }

    #[test]
    fn metadata_survives_struct_round_trip() {
        let json = serde_json::json!({"floor": 2, "ratio": 0.5, "ok": true, "none": null, "list": ["a", 1], "nested": {"x": "y"}});
        assert_eq!(struct_to_json(json_to_struct(json.clone())), json);
    }
}
