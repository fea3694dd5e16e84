//! Who may connect and what they may do: the [`Authorizer`] the broker asks, and the default [`AllowAll`].
//!
//! The contract lives in `ferrite-auth` (std only), so that the registry, which implements it, does not build the broker;
//! it is re-exported here under the paths the broker has always offered.

pub use ferrite_auth::*;
