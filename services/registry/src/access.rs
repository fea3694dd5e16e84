//! Who may call the APIs: the registry's token table is the host's [`TokenAuthority`], behind the [`ferrite_api::ApiGuard`]
//! that both faces and every [`ferrite_api::ApiExtension`] share.

use ferrite_api::{AccessError, BoxFuture, TokenAuthority};

use crate::{RegistryError, RegistryService};

impl TokenAuthority for RegistryService {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(async move {
            match self.authenticate_token(token).await {
                Ok(_) => Ok(()),
                Err(RegistryError::Unauthenticated) => Err(AccessError::Unauthenticated),
                Err(err) => {
                    err.log_if_internal();
                    Err(AccessError::Unavailable)
                }
            }
        })
    }
}
