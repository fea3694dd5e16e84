//! `ferrite device ...` and `ferrite token ...` as the binary will run them: parsed by clap, over gRPC.

use clap::{Parser, Subcommand};
use ferrite_registry::cli::{DeviceArgs, TokenArgs, run_device_command, run_token_command};
use secrecy::ExposeSecret;

use crate::support::{TestRegistry, set_presence};

/// The shape of the `ferrite` binary's command line, for these commands.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Device(DeviceArgs),
    Token(TokenArgs),
}

/// Runs `ferrite <args>` against the registry with `token` and returns what it printed.
async fn ferrite(registry: &TestRegistry, token: &str, args: &[&str]) -> anyhow::Result<String> {
    let url = registry.grpc_url();
    let mut argv = vec!["ferrite", args[0], "--registry", &url, "--token", token];
    argv.extend_from_slice(&args[1..]);
    let cli = Cli::try_parse_from(argv)?;
    let mut out = Vec::new();
    match cli.command {
        Command::Device(args) => run_device_command(args, &mut out).await?,
        Command::Token(args) => run_token_command(args, &mut out).await?,
    }
    Ok(String::from_utf8(out)?)
}

#[tokio::test]
async fn device_commands_print_tables_and_json() -> anyhow::Result<()> {
    let registry = TestRegistry::start(true).await?;
    let issued = registry.service.create_token("cli").await?;
    let token = issued.secret.expose_secret().to_owned();

    let created =
        ferrite(&registry, &token, &["device", "create", "boiler-1", "--name", "Boiler", "--tag", "heat"]).await?;
    assert!(created.starts_with("ID "), "{created}");
    assert!(created.contains("boiler-1") && created.contains("heat"), "{created}");
    let password = created
        .lines()
        .find_map(|line| line.strip_prefix("MQTT password: "))
        .expect("the password is printed")
        .to_owned();
    assert!(registry.service.verify_device_secret("boiler-1", password.as_bytes()).await?);

    let json: serde_json::Value =
        serde_json::from_str(&ferrite(&registry, &token, &["device", "create", "boiler-2", "--json"]).await?)?;
    assert_eq!(json["device"]["id"], "boiler-2");
    assert_eq!(json["credentials"]["username"], "boiler-2");
    set_presence(registry.pool(), "boiler-2", true).await?;

    let got = ferrite(&registry, &token, &["device", "get", "boiler-1"]).await?;
    assert!(got.contains("name:") && got.contains("Boiler") && got.contains("never seen"), "{got}");

    let listed = ferrite(&registry, &token, &["device", "list", "--limit", "1"]).await?;
    assert_eq!(listed.lines().count(), 3, "header, one device and the cursor: {listed}");
    assert!(listed.contains("more: --cursor boiler-1"), "{listed}");
    let all = ferrite(&registry, &token, &["device", "list", "--limit", "1", "--all", "--json"]).await?;
    let all: serde_json::Value = serde_json::from_str(&all)?;
    assert_eq!(all["devices"].as_array().map(Vec::len), Some(2));
    let online = ferrite(&registry, &token, &["device", "list", "--online", "--json"]).await?;
    let online: serde_json::Value = serde_json::from_str(&online)?;
    assert_eq!(online["devices"][0]["id"], "boiler-2");
    assert_eq!(online["devices"][0]["presence"]["online"], true);
    assert_eq!(online["devices"].as_array().map(Vec::len), Some(1));

    let updated = ferrite(
        &registry,
        &token,
        &["device", "update", "boiler-1", "--clear-name", "--metadata", r#"{"kw": 24}"#, "--json"],
    )
    .await?;
    let updated: serde_json::Value = serde_json::from_str(&updated)?;
    assert!(updated["name"].is_null());
    assert_eq!(updated["metadata"], serde_json::json!({"kw": 24}));
    assert_eq!(updated["tags"], serde_json::json!(["heat"]));

    let rotated = ferrite(&registry, &token, &["device", "rotate", "boiler-1"]).await?;
    assert!(rotated.contains("MQTT password: ") && !rotated.contains(&password), "{rotated}");

    let deleted = ferrite(&registry, &token, &["device", "delete", "boiler-1"]).await?;
    assert_eq!(deleted.trim(), "deleted device boiler-1");
    let missing = ferrite(&registry, &token, &["device", "get", "boiler-1"]).await.expect_err("deleted");
    assert!(missing.to_string().contains("not found"), "{missing}");
    let refused = ferrite(&registry, "fer_wrong", &["device", "list"]).await.expect_err("bad token");
    assert!(refused.to_string().contains("API token"), "{refused}");
    let nothing = ferrite(&registry, &token, &["device", "update", "boiler-2"]).await.expect_err("no change");
    assert!(nothing.to_string().contains("nothing to change"), "{nothing}");
    registry.stop().await
}

#[tokio::test]
async fn token_commands_create_list_and_revoke() -> anyhow::Result<()> {
    let registry = TestRegistry::start(true).await?;

    // The first token, straight into the database, as an operator bootstraps a registry that requires one.
    let url = registry.db().url();
    let cli =
        Cli::try_parse_from(["ferrite", "token", "create", "--name", "bootstrap", "--direct", "--database-url", &url])?;
    let mut out = Vec::new();
    let Command::Token(args) = cli.command else { anyhow::bail!("parsed as a device command") };
    run_token_command(args, &mut out).await?;
    let out = String::from_utf8(out)?;
    let token = out.lines().find_map(|line| line.strip_prefix("secret: ")).expect("the secret is printed").to_owned();

    let created = ferrite(&registry, &token, &["token", "create", "--name", "ci", "--json"]).await?;
    let created: serde_json::Value = serde_json::from_str(&created)?;
    let ci_id = created["token"]["id"].as_str().expect("id").to_owned();
    assert!(created["secret"].as_str().is_some_and(|secret| secret.starts_with("fer_")));

    let listed = ferrite(&registry, &token, &["token", "list"]).await?;
    assert!(listed.contains("bootstrap") && listed.contains("ci") && listed.starts_with("ID "), "{listed}");
    assert!(!listed.contains(&token), "secrets are never listed");

    let revoked = ferrite(&registry, &token, &["token", "revoke", &ci_id]).await?;
    assert_eq!(revoked.trim(), format!("revoked token {ci_id}"));
    let listed = ferrite(&registry, &token, &["token", "list", "--json"]).await?;
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let all = ferrite(&registry, &token, &["token", "list", "--all", "--json"]).await?;
    let all: serde_json::Value = serde_json::from_str(&all)?;
    assert_eq!(all.as_array().map(Vec::len), Some(2));
    registry.stop().await
}
