//! `ferrite device ...` and `ferrite token ...`: a small admin CLI over the registry's gRPC API,
//! with a table by default and `--json` for scripts. The binary parses these types and calls
//! [`run_device_command`] / [`run_token_command`].

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use ferrite_proto::v1 as pb;
use ferrite_proto::v1::api_tokens_client::ApiTokensClient;
use ferrite_proto::v1::device_registry_client::DeviceRegistryClient;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::grpc::{json_to_struct, struct_to_json};

/// The registry on this machine, as `ferrite up` starts it.
pub const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:50051";
/// A registry that does not answer within this is reported as down rather than waited for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the registry.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The registry's gRPC URL.
    #[arg(long = "registry", env = "FERRITE_REGISTRY_URL", default_value = DEFAULT_REGISTRY_URL)]
    pub registry_url: String,
    /// An API token (`ferrite token create`); needed unless the registry allows anonymous calls.
    #[arg(long = "token", env = "FERRITE_API_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub token: Option<SecretString>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value.to_owned()))
}

fn parse_json_object(value: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str(value) {
        Ok(object @ serde_json::Value::Object(_)) => Ok(object),
        Ok(_) => Err("expected a JSON object, e.g. '{\"site\": \"lab\"}'".into()),
        Err(err) => Err(format!("invalid JSON: {err}")),
    }
}

/// `ferrite device ...`
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: DeviceCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DeviceCommand {
    /// Register a device and print its MQTT credentials (the secret is shown only once).
    Create {
        /// 1 to 64 of A-Z a-z 0-9 _ . -
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// A tag; repeat for several.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// A JSON object.
        #[arg(long, value_parser = parse_json_object)]
        metadata: Option<serde_json::Value>,
    },
    /// Show one device.
    Get { id: String },
    /// List devices in id order.
    List {
        /// Only devices with this tag; repeat to require several.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Only devices that are online.
        #[arg(long, conflicts_with = "offline")]
        online: bool,
        /// Only devices that are offline or were never seen.
        #[arg(long)]
        offline: bool,
        /// Only devices whose id starts with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Devices per page.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this cursor (printed below a page that has more).
        #[arg(long, conflicts_with = "all")]
        cursor: Option<String>,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
    },
    /// Change a device's name, tags or metadata.
    Update {
        id: String,
        #[arg(long, conflicts_with = "clear_name")]
        name: Option<String>,
        #[arg(long)]
        clear_name: bool,
        /// Replace the tags with these; repeat for several.
        #[arg(long = "tag", conflicts_with = "clear_tags")]
        tags: Vec<String>,
        /// Remove every tag.
        #[arg(long)]
        clear_tags: bool,
        /// Replace the metadata with this JSON object.
        #[arg(long, value_parser = parse_json_object)]
        metadata: Option<serde_json::Value>,
    },
    /// Delete a device with its credentials; it can no longer connect.
    Delete { id: String },
    /// Issue a new MQTT secret (shown only once); the old one stops working.
    Rotate { id: String },
}

/// `ferrite token ...`
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Create an API token (shown only once).
    Create {
        /// What the token is for, e.g. `ci` or `grafana`.
        #[arg(long)]
        name: String,
        /// Write the token straight into the database at DATABASE_URL instead of asking the registry:
        /// how the first token is made when the registry already requires one.
        #[arg(long)]
        direct: bool,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// List API tokens (never their secrets).
    List {
        /// Include revoked tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke an API token; calls with it are refused at once.
    Revoke { id: String },
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
struct Bearer(Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

async fn channel(client: &ClientArgs) -> anyhow::Result<(Channel, Bearer)> {
    let endpoint = Endpoint::from_shared(client.registry_url.clone())
        .with_context(|| format!("invalid registry URL {:?}", client.registry_url))?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel =
        endpoint.connect().await.with_context(|| format!("cannot reach the registry at {}", client.registry_url))?;
    let bearer = match &client.token {
        Some(token) => {
            let value = MetadataValue::try_from(format!("Bearer {}", token.expose_secret()))
                .context("the API token contains characters that cannot be sent")?;
            Bearer(Some(value))
        }
        None => Bearer(None),
    };
    Ok((channel, bearer))
}

/// A gRPC failure as one clear line.
fn call_failed(status: tonic::Status) -> anyhow::Error {
    if status.code() == tonic::Code::Unauthenticated {
        anyhow::anyhow!("{}: pass an API token with --token or FERRITE_API_TOKEN", status.message())
    } else {
        anyhow::anyhow!("{}", status.message())
    }
}

/// Runs one `ferrite device` command against the registry, writing its output to `out`.
/// The registry client the CLI speaks through: gRPC with the bearer token, if any.
type RegistryClient = DeviceRegistryClient<InterceptedService<Channel, Bearer>>;

/// One page of devices, or every page from `query`'s cursor on when `all`; the cursor after the last page read.
async fn list_devices(
    registry: &mut RegistryClient,
    mut query: pb::ListDevicesRequest,
    all: bool,
) -> anyhow::Result<(Vec<pb::Device>, String)> {
    let mut devices = Vec::new();
    loop {
        let page = registry.list_devices(query.clone()).await.map_err(call_failed)?.into_inner();
        devices.extend(page.devices);
        if !all || page.next_page_token.is_empty() {
            return Ok((devices, page.next_page_token));
        }
        query.page_token = page.next_page_token;
    }
}

fn write_device_list(
    out: &mut (dyn Write + Send),
    devices: &[pb::Device],
    next: &str,
    json_output: bool,
) -> anyhow::Result<()> {
    if json_output {
        let value = json!({
            "devices": devices.iter().map(device_json).collect::<Vec<_>>(),
            "nextCursor": Some(next).filter(|next| !next.is_empty()),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        write_devices(out, devices)?;
        if !next.is_empty() {
            writeln!(out, "more: --cursor {next}")?;
        }
    }
    Ok(())
}

pub async fn run_device_command(args: DeviceArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let (channel, bearer) = channel(&args.client).await?;
    let mut registry: RegistryClient = DeviceRegistryClient::new(InterceptedService::new(channel, bearer));
    let json_output = args.client.json;
    match args.command {
        DeviceCommand::Create { id, name, tags, metadata } => {
            let request = pb::CreateDeviceRequest {
                id,
                name: name.unwrap_or_default(),
                tags,
                metadata: metadata.map(json_to_struct),
            };
            let created = registry.create_device(request).await.map_err(call_failed)?.into_inner();
            let device = created.device.context("registry sent no device")?;
            let credentials = created.credentials.context("registry sent no credentials")?;
            if json_output {
                let value = json!({"device": device_json(&device), "credentials": credentials_json(&credentials)});
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                write_devices(out, std::slice::from_ref(&device))?;
                write_credentials(out, &credentials)?;
            }
        }
        DeviceCommand::Get { id } => {
            let device = registry.get_device(pb::GetDeviceRequest { id }).await.map_err(call_failed)?.into_inner();
            if json_output {
                writeln!(out, "{}", serde_json::to_string_pretty(&device_json(&device))?)?;
            } else {
                write_device_details(out, &device)?;
            }
        }
        DeviceCommand::List { tags, online, offline, prefix, limit, cursor, all } => {
            let presence = match (online, offline) {
                (true, _) => pb::PresenceFilter::Online,
                (_, true) => pb::PresenceFilter::Offline,
                _ => pb::PresenceFilter::Unspecified,
            };
            let query = pb::ListDevicesRequest {
                page_size: limit,
                page_token: cursor.unwrap_or_default(),
                tags,
                presence: presence as i32,
                id_prefix: prefix.unwrap_or_default(),
            };
            let (devices, next) = list_devices(&mut registry, query, all).await?;
            write_device_list(out, &devices, &next, json_output)?;
        }
        DeviceCommand::Update { id, name, clear_name, tags, clear_tags, metadata } => {
            let name = if clear_name { Some(String::new()) } else { name };
            let tags = (clear_tags || !tags.is_empty()).then_some(pb::Tags { tags });
            if name.is_none() && tags.is_none() && metadata.is_none() {
                bail!("nothing to change: give --name, --clear-name, --tag, --clear-tags or --metadata");
            }
            let request = pb::UpdateDeviceRequest { id, name, tags, metadata: metadata.map(json_to_struct) };
            let device = registry.update_device(request).await.map_err(call_failed)?.into_inner();
            if json_output {
                writeln!(out, "{}", serde_json::to_string_pretty(&device_json(&device))?)?;
            } else {
                write_device_details(out, &device)?;
            }
        }
        DeviceCommand::Delete { id } => {
            registry.delete_device(pb::DeleteDeviceRequest { id: id.clone() }).await.map_err(call_failed)?;
            if json_output {
                writeln!(out, "{}", json!({"deleted": id}))?;
            } else {
                writeln!(out, "deleted device {id}")?;
            }
        }
        DeviceCommand::Rotate { id } => {
            let credentials = registry
                .rotate_credentials(pb::RotateCredentialsRequest { id })
                .await
                .map_err(call_failed)?
                .into_inner();
            if json_output {
                writeln!(out, "{}", serde_json::to_string_pretty(&credentials_json(&credentials))?)?;
            } else {
                write_credentials(out, &credentials)?;
            }
        }
    }
    Ok(())
}

/// Runs one `ferrite token` command, writing its output to `out`.
pub async fn run_token_command(args: TokenArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let json_output = args.client.json;
    if let TokenCommand::Create { name, direct: true, database_url } = &args.command {
        let url = database_url.as_deref().context("--direct needs DATABASE_URL (or --database-url)")?;
        let options = url.parse().context("DATABASE_URL is not a PostgreSQL URL")?;
        let pool = ferrite_db::connect(options).await.context("cannot connect to the database")?;
        let issued = crate::RegistryService::new(pool).create_token(name).await?;
        let token = pb::ApiToken {
            id: issued.token.id.to_string(),
            name: issued.token.name,
            created_at: None,
            revoked_at: None,
        };
        return write_new_token(out, json_output, &token, issued.secret.expose_secret());
    }
    let (channel, bearer) = channel(&args.client).await?;
    let mut tokens = ApiTokensClient::new(InterceptedService::new(channel, bearer));
    match args.command {
        TokenCommand::Create { name, .. } => {
            let created = tokens.create_token(pb::CreateTokenRequest { name }).await.map_err(call_failed)?.into_inner();
            let token = created.token.context("registry sent no token")?;
            write_new_token(out, json_output, &token, &created.secret)?;
        }
        TokenCommand::List { all } => {
            let listed = tokens
                .list_tokens(pb::ListTokensRequest { include_revoked: all })
                .await
                .map_err(call_failed)?
                .into_inner();
            if json_output {
                let value: Vec<_> = listed.tokens.iter().map(token_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                let rows = listed
                    .tokens
                    .iter()
                    .map(|token| {
                        vec![
                            token.id.clone(),
                            token.name.clone(),
                            time_text(token.created_at.as_ref()),
                            token.revoked_at.as_ref().map(|at| time_text(Some(at))).unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect::<Vec<_>>();
                write_table(out, &["ID", "NAME", "CREATED", "REVOKED"], &rows)?;
            }
        }
        TokenCommand::Revoke { id } => {
            tokens.revoke_token(pb::RevokeTokenRequest { id: id.clone() }).await.map_err(call_failed)?;
            if json_output {
                writeln!(out, "{}", json!({"revoked": id}))?;
            } else {
                writeln!(out, "revoked token {id}")?;
            }
        }
    }
    Ok(())
}

fn write_new_token(
    out: &mut (dyn Write + Send),
    json_output: bool,
    token: &pb::ApiToken,
    secret: &str,
) -> anyhow::Result<()> {
    if json_output {
        writeln!(out, "{}", serde_json::to_string_pretty(&json!({"token": token_json(token), "secret": secret}))?)?;
    } else {
        writeln!(out, "token {} ({})", token.id, token.name)?;
        writeln!(out, "secret: {secret}")?;
        writeln!(out, "This secret is shown only once: export FERRITE_API_TOKEN={secret}")?;
    }
    Ok(())
}

fn to_chrono(at: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let at = at?;
    DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).unwrap_or(0))
}

fn time_text(at: Option<&prost_types::Timestamp>) -> String {
    to_chrono(at).map(|at| at.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
}

fn device_json(device: &pb::Device) -> serde_json::Value {
    json!({
        "id": device.id,
        "name": Some(&device.name).filter(|name| !name.is_empty()),
        "tags": device.tags,
        "metadata": device.metadata.clone().map(struct_to_json).unwrap_or_else(|| json!({})),
        "autoRegistered": device.auto_registered,
        "createdAt": to_chrono(device.created_at.as_ref()),
        "updatedAt": to_chrono(device.updated_at.as_ref()),
        "presence": device.presence.as_ref().map(|presence| json!({
            "online": presence.online,
            "lastSeen": to_chrono(presence.last_seen.as_ref()),
            "changedAt": to_chrono(presence.changed_at.as_ref()),
        })),
        "hasCredentials": device.has_credentials,
    })
}

fn credentials_json(credentials: &pb::DeviceCredentials) -> serde_json::Value {
    json!({"deviceId": credentials.device_id, "username": credentials.username, "secret": credentials.secret})
}

fn token_json(token: &pb::ApiToken) -> serde_json::Value {
    json!({
        "id": token.id,
        "name": token.name,
        "createdAt": to_chrono(token.created_at.as_ref()),
        "revokedAt": to_chrono(token.revoked_at.as_ref()),
    })
}

fn presence_text(device: &pb::Device) -> (String, String) {
    match &device.presence {
        Some(presence) => {
            (if presence.online { "online" } else { "offline" }.to_owned(), time_text(presence.last_seen.as_ref()))
        }
        None => ("never seen".to_owned(), "-".to_owned()),
    }
}

fn write_devices(out: &mut (dyn Write + Send), devices: &[pb::Device]) -> anyhow::Result<()> {
    let rows = devices
        .iter()
        .map(|device| {
            let (presence, last_seen) = presence_text(device);
            vec![
                device.id.clone(),
                if device.name.is_empty() { "-".into() } else { device.name.clone() },
                if device.tags.is_empty() { "-".into() } else { device.tags.join(",") },
                presence,
                last_seen,
                if device.has_credentials { "yes" } else { "no" }.into(),
            ]
        })
        .collect::<Vec<_>>();
    write_table(out, &["ID", "NAME", "TAGS", "PRESENCE", "LAST SEEN", "CREDENTIALS"], &rows)
}

fn write_device_details(out: &mut (dyn Write + Send), device: &pb::Device) -> anyhow::Result<()> {
    let (presence, last_seen) = presence_text(device);
    let metadata = device.metadata.clone().map(struct_to_json).unwrap_or_else(|| json!({}));
    let rows = [
        ("id", device.id.clone()),
        ("name", if device.name.is_empty() { "-".into() } else { device.name.clone() }),
        ("tags", if device.tags.is_empty() { "-".into() } else { device.tags.join(",") }),
        ("metadata", metadata.to_string()),
        ("presence", presence),
        ("last seen", last_seen),
        ("credentials", if device.has_credentials { "yes" } else { "no" }.into()),
        ("auto-registered", if device.auto_registered { "yes" } else { "no" }.into()),
        ("created", time_text(device.created_at.as_ref())),
        ("updated", time_text(device.updated_at.as_ref())),
    ];
    for (label, value) in rows {
        writeln!(out, "{:<16}{value}", format!("{label}:"))?;
    }
    Ok(())
}

fn write_credentials(out: &mut (dyn Write + Send), credentials: &pb::DeviceCredentials) -> anyhow::Result<()> {
    writeln!(out, "MQTT username: {}", credentials.username)?;
    writeln!(out, "MQTT password: {}", credentials.secret)?;
    writeln!(
        out,
        "The password is shown only once; `ferrite device rotate {}` issues a new one.",
        credentials.device_id
    )?;
    Ok(())
}

/// Left-aligned columns as wide as their widest cell, two spaces apart.
fn write_table(out: &mut (dyn Write + Send), headers: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut out = Vec::new();
        let rows = vec![vec!["a".to_owned(), "long value".to_owned()], vec!["longer id".to_owned(), "x".to_owned()]];
        write_table(&mut out, &["ID", "VALUE"], &rows).expect("write to a Vec");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text, "ID         VALUE\na          long value\nlonger id  x\n");
    }
}
