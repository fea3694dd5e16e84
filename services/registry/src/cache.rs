//! A short-lived cache of device credential checks, so that a connection storm costs one argon2 verification
//! per distinct (device, password) instead of one per connection.
//!
//! Concurrent checks of the same pair share one verification. Rotating or deleting a device in this process
//! drops its entries at once; other processes (a broker started on its own) learn of it when the entries expire,
//! which is why the lifetimes are seconds.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
// Tokio's clock, so that tests can move time forward instead of sleeping through the TTLs.
use tokio::time::Instant;

use crate::RegistryError;

/// How long an accepted password is trusted without asking PostgreSQL again.
/// It bounds how long a device rotated or deleted through another process can still connect.
pub const POSITIVE_TTL: Duration = Duration::from_secs(5);
/// How long a refused password stays refused; short, because a device created through another process
/// should not wait long to connect, and a wrong password costs an attacker just as much either way.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// Past this many entries the expired ones are swept, and if that is not enough the cache starts over:
/// the memory a flood of random passwords can take stays bounded.
const MAX_ENTRIES: usize = 100_000;

type Key = [u8; 32];
/// One verification, shared by every caller that asks while it runs and by later ones until it expires.
type Slot = Arc<OnceCell<Verdict>>;

struct Verdict {
    valid: bool,
    at: Instant,
}

impl Verdict {
    fn expired(&self, now: Instant) -> bool {
        let ttl = if self.valid { POSITIVE_TTL } else { NEGATIVE_TTL };
        now.duration_since(self.at) >= ttl
    }
}

/// Verdicts per device id, then per SHA-256 of the password (the password itself is not kept).
#[derive(Default)]
pub(crate) struct CredentialCache {
    entries: Mutex<HashMap<String, HashMap<Key, Slot>>>,
}

impl CredentialCache {
    /// Returns the cached verdict for `(device, password)`, or runs `verify` (once, however many callers wait).
    /// A failed verification (the database is down) is not cached.
    pub(crate) async fn check<F, Fut>(&self, device: &str, password: &[u8], verify: F) -> Result<bool, RegistryError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<bool, RegistryError>>,
    {
        let key = crate::secret::password_digest(password);
        let cell = self.cell(device, key);
        let verdict = cell
            .get_or_try_init(|| async {
                let valid = verify().await?;
                Ok::<_, RegistryError>(Verdict { valid, at: Instant::now() })
            })
            .await?;
        Ok(verdict.valid)
    }

    /// The finished, unexpired verdict for `(device, password)`, if any.
    pub(crate) fn peek(&self, device: &str, password: &[u8]) -> Option<bool> {
        let key = crate::secret::password_digest(password);
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let verdict = entries.get(device)?.get(&key)?.get()?;
        (!verdict.expired(now)).then_some(verdict.valid)
    }

    /// The cell for a key: the existing one unless it has expired.
    fn cell(&self, device: &str, key: Key) -> Slot {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cell) = entries.get(device).and_then(|per_device| per_device.get(&key))
            && !cell.get().is_some_and(|verdict| verdict.expired(now))
        {
            return cell.clone();
        }
        if entries.values().map(HashMap::len).sum::<usize>() >= MAX_ENTRIES {
            for per_device in entries.values_mut() {
                per_device.retain(|_, cell| !cell.get().is_some_and(|verdict| verdict.expired(now)));
            }
            entries.retain(|_, per_device| !per_device.is_empty());
            if entries.values().map(HashMap::len).sum::<usize>() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        let cell = Arc::new(OnceCell::new());
        entries.entry(device.to_owned()).or_default().insert(key, cell.clone());
        cell
    }

    /// Forgets every verdict about `device`: its next connection is checked against the database.
    pub(crate) fn invalidate(&self, device: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.remove(device);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_checks_share_one_verification_and_invalidation_forces_another() {
        let cache = Arc::new(CredentialCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut checks = Vec::new();
        for _ in 0..50 {
            let (cache, calls) = (cache.clone(), calls.clone());
            checks.push(tokio::spawn(async move {
                cache
                    .check("dev-1", b"pw", || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(true)
                    })
                    .await
            }));
        }
        for check in checks {
            assert!(check.await.expect("task").expect("check"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Another password for the same device is a separate entry.
        assert!(!cache.check("dev-1", b"other", || async { Ok(false) }).await.expect("check"));

        cache.invalidate("dev-1");
        let again = cache.check("dev-1", b"pw", || async { Ok(false) }).await.expect("check");
        assert!(!again, "after invalidation the database answer wins");
    }

    #[tokio::test(start_paused = true)]
    async fn verdicts_expire() {
        let cache = CredentialCache::default();
        assert!(cache.check("dev", b"pw", || async { Ok(true) }).await.expect("check"));
        assert!(!cache.check("dev", b"bad", || async { Ok(false) }).await.expect("check"));

        // Within their lifetimes the cached answers stand, whatever the database would say now.
        tokio::time::advance(NEGATIVE_TTL - Duration::from_millis(1)).await;
        assert!(cache.check("dev", b"pw", || async { Ok(false) }).await.expect("check"));
        assert!(!cache.check("dev", b"bad", || async { Ok(true) }).await.expect("check"));

        // A refusal is forgotten first, an acceptance later.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cache.check("dev", b"bad", || async { Ok(true) }).await.expect("check"));
        assert!(cache.check("dev", b"pw", || async { Ok(false) }).await.expect("check"));
        tokio::time::advance(POSITIVE_TTL).await;
        assert!(!cache.check("dev", b"pw", || async { Ok(false) }).await.expect("check"));
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let cache = CredentialCache::default();
        let failed = cache.check("dev", b"pw", || async { Err(RegistryError::Internal("db down".into())) }).await;
        assert!(failed.is_err());
        assert!(cache.check("dev", b"pw", || async { Ok(true) }).await.expect("check"));
    }
}
