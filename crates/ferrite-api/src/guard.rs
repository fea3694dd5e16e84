//! Who may call the APIs: an API token (`Authorization: Bearer fer_...`) unless anonymous access is allowed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tonic::Status;

use crate::http::ApiError;

/// A boxed, sendable future, so that [`TokenAuthority`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessError {
    /// No token where one is needed, or a token that is malformed, unknown or revoked.
    Unauthenticated,
    /// The tokens could not be checked (the database is unreachable); the cause is logged by whoever knows it.
    Unavailable,
}

impl AccessError {
    const UNAUTHENTICATED: &str = "missing or invalid api token";
    /// Server-side details stay in the log.
    const UNAVAILABLE: &str = "internal error";
}

impl From<AccessError> for ApiError {
    fn from(err: AccessError) -> Self {
        match err {
            AccessError::Unauthenticated => ApiError::new(StatusCode::UNAUTHORIZED, AccessError::UNAUTHENTICATED),
            AccessError::Unavailable => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, AccessError::UNAVAILABLE),
        }
    }
}

impl From<AccessError> for Status {
    fn from(err: AccessError) -> Self {
        match err {
            AccessError::Unauthenticated => Status::unauthenticated(AccessError::UNAUTHENTICATED),
            AccessError::Unavailable => Status::unavailable(AccessError::UNAVAILABLE),
        }
    }
}

/// Verifies API tokens: the registry's token table.
pub trait TokenAuthority: Send + Sync + 'static {
    /// `Ok` for a known, unrevoked token; [`AccessError::Unauthenticated`] otherwise.
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<(), AccessError>>;
}

/// The API token check every face on the host's ports shares (REST as a route layer, [`require_token`];
/// gRPC services call [`ApiGuard::check`] first). Cheap to clone.
#[derive(Clone)]
pub struct ApiGuard {
    authority: Arc<dyn TokenAuthority>,
    /// False only when every listener is on loopback or anonymous access was asked for.
    token_required: bool,
}

impl ApiGuard {
    pub fn new(authority: Arc<dyn TokenAuthority>, token_required: bool) -> Self {
        ApiGuard { authority, token_required }
    }

    /// Whether calls need a token.
    pub fn token_required(&self) -> bool {
        self.token_required
    }

    /// Checks a gRPC request's `authorization` metadata (`Bearer fer_...`): `Unauthenticated` when a needed token is
    /// missing or any sent token is wrong.
    pub async fn check<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        let authorization = match request.metadata().get("authorization") {
            Some(value) => Some(value.to_str().map_err(|_| AccessError::Unauthenticated)?),
            None => None,
        };
        Ok(self.check_header(authorization).await?)
    }

    /// Checks an HTTP `Authorization` header or gRPC metadata value.
    ///
    /// A token that is sent is always checked, even where none is required, so that a client with a
    /// revoked or mistyped token learns it now rather than when the host moves off loopback.
    pub async fn check_header(&self, authorization: Option<&str>) -> Result<(), AccessError> {
        let Some(value) = authorization else {
            return if self.token_required { Err(AccessError::Unauthenticated) } else { Ok(()) };
        };
        let token = bearer_token(value).ok_or(AccessError::Unauthenticated)?;
        self.authority.verify(token).await
    }
}

/// The REST token check, as a route layer: `route_layer(axum::middleware::from_fn_with_state(guard, require_token))`
/// (a route layer runs only for matched routes, so an unknown path stays a 404, not a 401).
pub async fn require_token(State(guard): State<ApiGuard>, request: Request, next: Next) -> Result<Response, ApiError> {
    let authorization = match request.headers().get(header::AUTHORIZATION) {
        Some(value) => Some(value.to_str().map_err(|_| AccessError::Unauthenticated)?),
        None => None,
    };
    guard.check_header(authorization).await?;
    Ok(next.run(request).await)
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_values() {
        assert_eq!(bearer_token("Bearer fer_abc"), Some("fer_abc"));
        assert_eq!(bearer_token("bearer  fer_abc "), Some("fer_abc"));
        assert_eq!(bearer_token("Basic dXNlcjpwdw=="), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    /// Knows one token.
    struct OneToken;

    impl TokenAuthority for OneToken {
        fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<(), AccessError>> {
            let known = token == "fer_good";
            Box::pin(async move { if known { Ok(()) } else { Err(AccessError::Unauthenticated) } })
        }
    }

    #[tokio::test]
    async fn a_sent_token_is_checked_even_where_none_is_required() {
        for required in [false, true] {
            let guard = ApiGuard::new(Arc::new(OneToken), required);
            assert_eq!(guard.check_header(Some("Bearer fer_good")).await, Ok(()));
            assert_eq!(guard.check_header(Some("Bearer fer_bad")).await, Err(AccessError::Unauthenticated));
            assert_eq!(guard.check_header(Some("Basic x")).await, Err(AccessError::Unauthenticated));
        }
        assert_eq!(ApiGuard::new(Arc::new(OneToken), false).check_header(None).await, Ok(()));
        assert_eq!(ApiGuard::new(Arc::new(OneToken), true).check_header(None).await, Err(AccessError::Unauthenticated));
    }

    #[test]
    fn refusals_keep_their_status_on_both_faces() {
        assert_eq!(ApiError::from(AccessError::Unauthenticated).status(), StatusCode::UNAUTHORIZED);
        assert_eq!(ApiError::from(AccessError::Unavailable).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Status::from(AccessError::Unauthenticated).code(), tonic::Code::Unauthenticated);
        assert_eq!(Status::from(AccessError::Unavailable).code(), tonic::Code::Unavailable);
    }
}
