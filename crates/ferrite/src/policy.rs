//! Browser publishes through the gateway follow the REST API's rule: free on loopback, an API token otherwise.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use ferrite_gateway::{AdmitFuture, ClientInfo, PublishPolicy};
use ferrite_registry::RegistryService;

/// Checks a browser's API token once, when it connects (revoking a token bars new connections at once;
/// an open one keeps the rights it was admitted with, as an MQTT connection does).
pub struct TokenPolicy {
    service: RegistryService,
    /// No token needed: the gateway listens on loopback only, or the user passed `--allow-anonymous`.
    open: bool,
    verified: Mutex<HashSet<String>>,
}

impl TokenPolicy {
    pub fn new(service: RegistryService, gateway: SocketAddr, allow_anonymous: bool) -> TokenPolicy {
        TokenPolicy::with_open(service, gateway.ip().is_loopback() || allow_anonymous)
    }

    fn with_open(service: RegistryService, open: bool) -> TokenPolicy {
        TokenPolicy { service, open, verified: Mutex::default() }
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A panic while holding this lock leaves a plain set behind, still valid to use.
        self.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl PublishPolicy for TokenPolicy {
    fn admit<'a>(&'a self, client: &'a ClientInfo) -> AdmitFuture<'a> {
        Box::pin(async move {
            let Some(token) = client.token.as_ref().filter(|_| !self.open) else { return };
            let valid = self.service.authenticate_token(token).await.is_ok();
            if valid {
                self.verified().insert(token.clone());
            } else {
                self.verified().remove(token);
            }
        })
    }

    fn check(&self, client: &ClientInfo, _topic: &str, _retain: bool) -> Result<(), String> {
        if self.open {
            return Ok(());
        }
        match &client.token {
            Some(token) if self.verified().contains(token) => Ok(()),
            Some(_) => Err("invalid or revoked api token".into()),
            None => {
                Err("publishing needs an api token here: connect with ?token=<token> or Authorization: Bearer <token> \
                         (ferrite token create)"
                    .into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_testkit::TestDb;
    use secrecy::ExposeSecret;

    fn client(token: Option<&str>) -> ClientInfo {
        ClientInfo { peer: None, token: token.map(str::to_owned) }
    }

    #[tokio::test]
    async fn tokens_are_checked_beyond_loopback() -> anyhow::Result<()> {
        let db = TestDb::new().await?;
        let service = RegistryService::new(db.pool().clone());
        let issued = service.create_token("dashboard").await?;
        let token = issued.secret.expose_secret().to_owned();

        let closed = TokenPolicy::with_open(service.clone(), false);
        for (info, allowed) in
            [(client(Some(&token)), true), (client(Some("not-a-token")), false), (client(None), false)]
        {
            closed.admit(&info).await;
            assert_eq!(closed.check(&info, "control/lights", false).is_ok(), allowed, "{:?}", info.token);
        }

        let open = TokenPolicy::new(service, "127.0.0.1:8080".parse()?, false);
        let anonymous = client(None);
        open.admit(&anonymous).await;
        assert!(open.check(&anonymous, "control/lights", false).is_ok());
        Ok(())
    }
}
