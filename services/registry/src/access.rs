//! Who may call the APIs: an API token (`Authorization: Bearer fer_...`) unless anonymous access is allowed.

use crate::{RegistryError, RegistryService};

/// The API token check shared by REST and gRPC.
#[derive(Clone)]
pub(crate) struct ApiAccess {
    service: RegistryService,
    /// False only when every listener is on loopback or anonymous access was asked for (see [`crate::Config`]).
    token_required: bool,
}

impl ApiAccess {
    pub(crate) fn new(service: RegistryService, token_required: bool) -> Self {
        ApiAccess { service, token_required }
    }

    /// Checks the `Authorization` header or metadata value.
    ///
    /// A token that is sent is always checked, even where none is required, so that a client with a
    /// revoked or mistyped token learns it now rather than when the registry moves off loopback.
    pub(crate) async fn check(&self, authorization: Option<&str>) -> Result<(), RegistryError> {
        let Some(value) = authorization else {
            return if self.token_required { Err(RegistryError::Unauthenticated) } else { Ok(()) };
        };
        let token = bearer_token(value).ok_or(RegistryError::Unauthenticated)?;
        self.service.authenticate_token(token).await.map(|_| ())
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn parses_bearer_values() {
        assert_eq!(bearer_token("Bearer fer_abc"), Some("fer_abc"));
        assert_eq!(bearer_token("bearer  fer_abc "), Some("fer_abc"));
        assert_eq!(bearer_token("Basic dXNlcjpwdw=="), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
