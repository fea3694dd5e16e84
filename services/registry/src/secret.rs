//! Secrets: device secrets hashed with argon2, API tokens hashed with SHA-256, both drawn from the OS's random source.
//!
//! Device secrets get argon2 because DESIGN.md asks for a password hash that resists offline guessing;
//! API tokens are checked on every request and are 256 random bits, against which a fast hash is just as safe.

use std::sync::{Arc, LazyLock};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::RegistryError;

/// Random bytes in a device secret or API token: 256 bits, beyond any guessing.
const SECRET_BYTES: usize = 32;

/// API tokens start with this, so that a leaked one is recognisable (secret scanners, logs) and
/// never mistaken for a device secret.
pub(crate) const TOKEN_PREFIX: &str = "fer_";

/// Argon2 with its default parameters (argon2id, 19 MiB, 2 passes) needs 19 MiB and a few tens of
/// milliseconds of one core per hash. Running more hashes at once than there are cores only adds memory,
/// so a connection storm queues here instead of starting hundreds of blocking threads.
static HASH_PERMITS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    Arc::new(Semaphore::new(cores))
});

/// `n` random bytes as lower-case hex: easy to paste into `mosquitto_pub -P`, no shell quoting needed.
fn random_hex(n: usize) -> Result<String, RegistryError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|err| RegistryError::Internal(format!("no random numbers: {err}")))?;
    Ok(to_hex(&bytes))
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// A new device secret (64 hex digits).
pub(crate) fn new_device_secret() -> Result<SecretString, RegistryError> {
    Ok(SecretString::from(random_hex(SECRET_BYTES)?))
}

/// A new API token: `fer_` and 64 hex digits.
pub(crate) fn new_api_token() -> Result<SecretString, RegistryError> {
    Ok(SecretString::from(format!("{TOKEN_PREFIX}{}", random_hex(SECRET_BYTES)?)))
}

/// What is stored for an API token.
pub(crate) fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A digest that stands for a password in memory (cache keys), so the password itself is not kept.
pub(crate) fn password_digest(password: &[u8]) -> [u8; 32] {
    Sha256::digest(password).into()
}

/// Hashes a device secret into an argon2 PHC string, off the async threads.
pub(crate) async fn hash_secret(secret: &SecretString) -> Result<String, RegistryError> {
    let secret = secret.clone();
    run_limited(move || {
        let hash: PasswordHash = Argon2::default()
            .hash_password(secret.expose_secret().as_bytes())
            .map_err(|err| RegistryError::Internal(format!("cannot hash secret: {err}")))?;
        Ok(hash.to_string())
    })
    .await
}

/// Whether `password` matches the stored PHC string; a malformed stored hash never matches.
pub(crate) async fn verify_secret(password: Vec<u8>, stored: String) -> Result<bool, RegistryError> {
    run_limited(move || {
        let Ok(hash) = PasswordHash::new(&stored) else {
            tracing::warn!("stored device secret hash is malformed; refusing");
            return Ok(false);
        };
        // The parameters come from the stored hash, not from this instance.
        Ok(Argon2::default().verify_password(&password, &hash).is_ok())
    })
    .await
}

async fn run_limited<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    // The semaphore is a static that is never closed, so acquiring cannot fail; map it anyway rather than panic.
    let _permit = HASH_PERMITS
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| RegistryError::Internal("hash limiter closed".into()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| RegistryError::Internal(format!("hashing task failed: {err}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_secret_verifies_against_its_hash_only() {
        let secret = new_device_secret().expect("random numbers");
        assert_eq!(secret.expose_secret().len(), 64);
        let stored = hash_secret(&secret).await.expect("hash");
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains(secret.expose_secret()));
        let right = verify_secret(secret.expose_secret().as_bytes().to_vec(), stored.clone()).await.expect("verify");
        let wrong = verify_secret(b"not-the-secret".to_vec(), stored).await.expect("verify");
        assert!(right);
        assert!(!wrong);
        let malformed = verify_secret(b"x".to_vec(), "not a hash".into()).await.expect("verify");
        assert!(!malformed);
    }

    #[test]
    fn tokens_are_prefixed_and_distinct() {
        let a = new_api_token().expect("random numbers");
        let b = new_api_token().expect("random numbers");
        assert!(a.expose_secret().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose_secret().len(), TOKEN_PREFIX.len() + 64);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(token_digest(a.expose_secret()).len(), 32);
    }
}
