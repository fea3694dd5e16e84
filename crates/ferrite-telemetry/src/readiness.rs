//! Readiness: `/readyz` answers 200 only when every registered check passes, 503 naming those that do not.
//!
//! `/healthz` stays liveness (the process serves HTTP); `/readyz` is what a load balancer or an orchestrator
//! (compose `healthcheck`, Kubernetes `readinessProbe`) should wait on: the MQTT session subscribed, the database
//! reachable. Checks are registered by the process that composes the services, into one process-wide
//! [`Readiness`] (like the metrics recorder), so `ferrite up` answers for all its services on one page.
//!
//! A check is a probe returning `Err(reason)` when not ready. A probe that does I/O (a `SELECT 1`) is registered
//! with a cache time, so a flood of `/readyz` requests costs the database one query per cache period; every probe
//! runs under [`PROBE_TIMEOUT`], so a hung dependency makes `/readyz` slow by at most that.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The longest one probe may take before it counts as not ready.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A probe's answer: `Ok` when ready, `Err` with the reason otherwise.
pub type ProbeResult = Result<(), String>;

/// A probe's future.
pub type ProbeFuture = Pin<Box<dyn Future<Output = ProbeResult> + Send>>;

type Probe = Box<dyn Fn() -> ProbeFuture + Send + Sync>;

struct Check {
    id: u64,
    name: String,
    probe: Probe,
    /// How long an answer is reused; zero for probes that only read memory.
    cache_for: Duration,
    cached: tokio::sync::Mutex<Option<(Instant, ProbeResult)>>,
}

impl Check {
    async fn run(&self) -> ProbeResult {
        if self.cache_for.is_zero() {
            return probe_with_timeout(&self.probe).await;
        }
        // One caller probes while the others wait for its answer.
        let mut cached = self.cached.lock().await;
        if let Some((at, answer)) = cached.as_ref()
            && at.elapsed() < self.cache_for
        {
            return answer.clone();
        }
        let answer = probe_with_timeout(&self.probe).await;
        *cached = Some((Instant::now(), answer.clone()));
        answer
    }
}

async fn probe_with_timeout(probe: &Probe) -> ProbeResult {
    match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
    }
}

/// The checks `/readyz` runs. Cheap to clone; clones share the checks.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<Arc<Check>>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

/// Keeps a check registered; dropping it removes the check (a stopped service no longer counts).
#[must_use = "dropping the guard removes the check"]
pub struct CheckGuard {
    readiness: Readiness,
    id: u64,
}

impl Drop for CheckGuard {
    fn drop(&mut self) {
        self.readiness.checks().retain(|check| check.id != self.id);
    }
}

/// What `/readyz` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub ready: bool,
    /// Every check by name: `"ok"` or the reason it is not ready.
    pub checks: BTreeMap<String, String>,
    /// The checks that are not ready, with their reasons (empty when ready).
    pub not_ready: BTreeMap<String, String>,
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }

    fn checks(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Check>>> {
        self.checks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `probe` under `name`, run on every `/readyz` (it should only read memory).
    pub fn add<F>(&self, name: impl Into<String>, probe: impl Fn() -> F + Send + Sync + 'static) -> CheckGuard
    where
        F: Future<Output = ProbeResult> + Send + 'static,
    {
        self.add_cached(name, Duration::ZERO, probe)
    }

    /// Registers `probe` under `name`, its answer reused for `cache_for` (for probes that do I/O).
    pub fn add_cached<F>(
        &self,
        name: impl Into<String>,
        cache_for: Duration,
        probe: impl Fn() -> F + Send + Sync + 'static,
    ) -> CheckGuard
    where
        F: Future<Output = ProbeResult> + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe: Probe = Box::new(move || Box::pin(probe()));
        let check = Check { id, name: name.into(), probe, cache_for, cached: tokio::sync::Mutex::new(None) };
        self.checks().push(Arc::new(check));
        CheckGuard { readiness: self.clone(), id }
    }

    /// Runs every check (concurrently) and reports.
    pub async fn report(&self) -> Report {
        let checks: Vec<Arc<Check>> = self.checks().clone();
        let answers = futures::future::join_all(checks.iter().map(|check| check.run())).await;
        let mut report = Report { ready: true, checks: BTreeMap::new(), not_ready: BTreeMap::new() };
        for (check, answer) in checks.iter().zip(answers) {
            // Two checks of one name (two instances in one process) are both kept, the second numbered.
            let mut name = check.name.clone();
            let mut n = 2;
            while report.checks.contains_key(&name) {
                name = format!("{}#{n}", check.name);
                n += 1;
            }
            match answer {
                Ok(()) => {
                    report.checks.insert(name, "ok".to_owned());
                }
                Err(reason) => {
                    report.ready = false;
                    report.checks.insert(name.clone(), reason.clone());
                    report.not_ready.insert(name, reason);
                }
            }
        }
        report
    }
}

/// The process-wide readiness that `/readyz` of [`crate::metrics_router`] answers for.
pub fn readiness() -> &'static Readiness {
    static READINESS: OnceLock<Readiness> = OnceLock::new();
    READINESS.get_or_init(Readiness::new)
}

/// `/readyz`: 200 with the report when ready, 503 with it otherwise.
pub(crate) async fn readyz(readiness: Readiness) -> Response {
    let report = readiness.report().await;
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[tokio::test]
    async fn names_what_is_not_ready_and_forgets_dropped_checks() {
        let readiness = Readiness::new();
        assert!(readiness.report().await.ready, "no check means ready");
        let up = Arc::new(AtomicBool::new(false));
        let guard = readiness.add("mqtt", {
            let up = up.clone();
            move || {
                let up = up.load(Ordering::Relaxed);
                async move { if up { Ok(()) } else { Err("not subscribed".to_owned()) } }
            }
        });
        let _db = readiness.add("database", || async { Ok(()) });
        let report = readiness.report().await;
        assert!(!report.ready);
        assert_eq!(report.not_ready, BTreeMap::from([("mqtt".to_owned(), "not subscribed".to_owned())]));
        assert_eq!(report.checks["database"], "ok");
        up.store(true, Ordering::Relaxed);
        assert!(readiness.report().await.ready);
        up.store(false, Ordering::Relaxed);
        drop(guard);
        assert!(readiness.report().await.ready, "a dropped check no longer counts");
    }

    #[tokio::test]
    async fn caches_probes_that_do_io() {
        let readiness = Readiness::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let _guard = readiness.add_cached("database", Duration::from_secs(3600), {
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            }
        });
        for _ in 0..5 {
            assert!(readiness.report().await.ready);
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_hung_probe_is_not_ready() {
        let readiness = Readiness::new();
        let _guard = readiness.add("database", std::future::pending);
        let report = readiness.report().await;
        assert_eq!(report.not_ready["database"], "no answer within 2s");
    }
}
