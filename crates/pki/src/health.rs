//! What monitoring reads from a role without a client certificate, on its
//! metrics listener:
//!
//! - `GET /metrics`: Prometheus text format.
//! - `GET /livez`: `200 ok` while the process serves at all.
//! - `GET /readyz`: `200` with each dependency's state while every one
//!   answers; `503` (problem+json naming those that do not) otherwise.
//!
//! A listener on a loopback address speaks plain HTTP; on any other
//! address, HTTPS with the role's certificate (no client certificate
//! asked, one offered is verified).
//!
//! A dependency is probed when `/readyz` is asked, at most once a second
//! whatever the number of monitors, each probe within [`PROBE_TIMEOUT`].
//! A dependency that stops answering is logged once, with why, and once
//! again when it answers again: not at every probe.

use crate::https::{self, Tasks};
use crate::metrics::Metrics;
use crate::tls::{Acceptor, ClientAuth};
use crate::{Credentials, Result};
use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// How long a dependency has to answer a probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a `/readyz` answer is reused.
const REUSE: Duration = Duration::from_secs(1);

/// A probe's future: `Err` says why the dependency does not answer.
type Probing = Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>>;

/// One thing a role needs to do its work.
struct Dependency {
    /// Short and stable: `chain`, `database`, `server`...
    name: &'static str,
    probe: Box<dyn Fn() -> Probing + Send + Sync>,
    /// As last seen, for logging changes only.
    down: AtomicBool,
}

/// The dependencies of a role, for `/readyz`.
pub struct Readiness {
    /// Who logs: `server`, `collector`.
    role: &'static str,
    dependencies: Vec<Dependency>,
    last: tokio::sync::Mutex<Option<(Instant, Arc<Report>)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.dependencies.iter().map(|d| d.name).collect();
        f.debug_struct("Readiness")
            .field("role", &self.role)
            .field("dependencies", &names)
            .finish()
    }
}

/// Each dependency's state, by name: `true` when it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report(pub BTreeMap<&'static str, bool>);

impl Report {
    /// Whether every dependency answered.
    pub fn ready(&self) -> bool {
        self.0.values().all(|up| *up)
    }
}

impl Readiness {
    /// No dependencies yet, for `role`.
    pub fn new(role: &'static str) -> Readiness {
        Readiness {
            role,
            dependencies: Vec::new(),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Adds the dependency `name`, up when `probe`'s future is `Ok`.
    pub fn needs<F, E>(
        mut self,
        name: &'static str,
        probe: impl Fn() -> F + Send + Sync + 'static,
    ) -> Readiness
    where
        F: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.dependencies.push(Dependency {
            name,
            probe: Box::new(move || {
                let probing = probe();
                Box::pin(async move { probing.await.map_err(|e| e.to_string()) })
            }),
            down: AtomicBool::new(false),
        });
        self
    }

    /// Probes every dependency at once (or reuses an answer under a
    /// second old), logging each that went down or came back.
    pub async fn check(&self) -> Arc<Report> {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < REUSE
        {
            return report.clone();
        }
        let probes: Vec<_> = self
            .dependencies
            .iter()
            .map(|d| tokio::spawn(tokio::time::timeout(PROBE_TIMEOUT, (d.probe)())))
            .collect();
        let mut report = BTreeMap::new();
        for (dependency, probe) in self.dependencies.iter().zip(probes) {
            let outcome = match probe.await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
                Err(e) => Err(format!("the probe failed: {e}")),
            };
            let was_down = dependency.down.swap(outcome.is_err(), Ordering::Relaxed);
            match (&outcome, was_down) {
                (Err(why), false) => tracing::warn!(
                    "medledger {}: not ready: the {} does not answer: {why}",
                    self.role,
                    dependency.name
                ),
                (Ok(()), true) => tracing::info!(
                    "medledger {}: the {} answers again",
                    self.role,
                    dependency.name
                ),
                _ => {}
            }
            report.insert(dependency.name, outcome.is_ok());
        }
        let report = Arc::new(Report(report));
        *last = Some((Instant::now(), report.clone()));
        report
    }
}

/// `/metrics`, `/livez` and `/readyz`.
fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/livez", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move { ready_answer(&*readiness.check().await) }
            }),
        )
}

/// `200 {"ready":true,"dependencies":{...}}`, or a 503 problem naming the
/// dependencies that do not answer (why is in the role's log).
fn ready_answer(report: &Report) -> Response {
    if report.ready() {
        let body = serde_json::json!({ "ready": true, "dependencies": report.0 });
        return (
            [(http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let down: Vec<_> = report
        .0
        .iter()
        .filter(|(_, up)| !**up)
        .map(|(name, _)| format!("the {name}"))
        .collect();
    https::problem_response(
        medledger_protocol::ProblemType::Unavailable,
        format!("not ready: {} does not answer", down.join(", ")),
    )
}

/// How monitoring reaches a listener bound to `addr`: `http://ADDR` on
/// loopback, `https://ADDR` elsewhere (see [`serve`]).
pub fn base_url(addr: std::net::SocketAddr) -> String {
    let scheme = if addr.ip().is_loopback() {
        "http"
    } else {
        "https"
    };
    format!("{scheme}://{addr}")
}

/// Serves `/metrics`, `/livez` and `/readyz` on `listener` from `tasks`:
/// plain HTTP on loopback, otherwise HTTPS presenting `own` (a client
/// certificate is not asked; one offered is checked by `client_auth`).
pub fn serve(
    tasks: &mut Tasks,
    listener: TcpListener,
    own: &Credentials,
    client_auth: Arc<ClientAuth>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> Result<()> {
    let app = router(metrics, readiness);
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    if loopback {
        tasks.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        return Ok(());
    }
    let tls = crate::server_config_optional_client(own, client_auth.clone())?;
    tasks.spawn(https::serve(
        listener,
        Acceptor::optional(tls, Duration::from_secs(5)),
        client_auth,
        app,
        https::ServeLimits {
            max_connections: 256,
            ..https::ServeLimits::default()
        },
        Arc::new(|_| {}),
    ));
    Ok(())
}

/// How often a continuing outage is logged again.
const REMIND: Duration = Duration::from_secs(30);

/// The repeated failures of a task that retries (indexing the chain,
/// anchoring, following events) logged as one outage: its first failure
/// at once, then at most every 30 s how long it has lasted and how many
/// attempts failed, and its end, instead of a line per attempt. Also
/// paces the retries: [`Outage::pause`] grows from the task's interval
/// to 5 s while the failures last.
#[derive(Debug)]
pub struct Outage {
    /// Who and what, e.g. `medledger server: indexing the chain`.
    what: String,
    /// Since when, how many failed attempts, when last logged.
    current: Option<(Instant, u64, Instant)>,
}

/// The longest pause between retries during an outage.
const MAX_PAUSE: Duration = Duration::from_secs(5);

impl Outage {
    /// No outage yet of `what`.
    pub fn new(what: impl Into<String>) -> Outage {
        Outage {
            what: what.into(),
            current: None,
        }
    }

    /// An attempt failed with `error`: logs it if it starts an outage or
    /// 30 s have passed since the last line.
    pub fn failed(&mut self, error: &dyn std::fmt::Display) {
        if let Some(line) = self.failed_at(Instant::now(), error) {
            tracing::warn!("{line}");
        }
    }

    /// An attempt worked: logs the end of an outage, if there was one.
    pub fn worked(&mut self) {
        if let Some(line) = self.worked_at(Instant::now()) {
            tracing::info!("{line}");
        }
    }

    /// How long to wait before the next attempt of a task that runs every
    /// `every`: `every` while it works, doubling per failed attempt up to
    /// 5 s during an outage.
    pub fn pause(&self, every: Duration) -> Duration {
        match self.current {
            None => every,
            Some((_, attempts, _)) => every
                .saturating_mul(1 << attempts.min(16))
                .min(MAX_PAUSE.max(every)),
        }
    }

    fn failed_at(&mut self, now: Instant, error: &dyn std::fmt::Display) -> Option<String> {
        let what = &self.what;
        match &mut self.current {
            None => {
                self.current = Some((now, 1, now));
                Some(format!("{what}: {error}"))
            }
            Some((since, attempts, said)) => {
                *attempts += 1;
                if now.duration_since(*said) < REMIND {
                    return None;
                }
                *said = now;
                Some(format!(
                    "{what}: still failing after {} s, {attempts} attempts: {error}",
                    now.duration_since(*since).as_secs()
                ))
            }
        }
    }

    fn worked_at(&mut self, now: Instant) -> Option<String> {
        let (since, attempts, _) = self.current.take()?;
        Some(format!(
            "{}: working again after {} s, {attempts} failed attempts",
            self.what,
            now.duration_since(since).as_secs()
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn probe_of(up: Arc<AtomicBool>, calls: Arc<AtomicUsize>) -> impl Fn() -> Probing {
        move || {
            let (up, calls) = (up.clone(), calls.clone());
            Box::pin(async move {
                calls.fetch_add(1, Ordering::Relaxed);
                if up.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("refused".to_owned())
                }
            })
        }
    }

    #[tokio::test]
    async fn ready_only_while_every_dependency_answers_and_probes_are_shared() {
        let (chain, calls) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicUsize::new(0)),
        );
        let readiness = Readiness::new("test")
            .needs("chain", probe_of(chain.clone(), calls.clone()))
            .needs("database", || async { Ok::<(), String>(()) });
        let report = readiness.check().await;
        assert!(report.ready());
        // Asked again at once: the same answer, no new probe.
        readiness.check().await;
        assert_eq!(calls.load(Ordering::Relaxed), 1);

        chain.store(false, Ordering::Relaxed);
        *readiness.last.lock().await = None;
        let report = readiness.check().await;
        assert!(!report.ready());
        assert_eq!(report.0.get("chain"), Some(&false));
        assert_eq!(report.0.get("database"), Some(&true));
        let answer = ready_answer(&report);
        assert_eq!(answer.status(), 503);
        let body = axum::body::to_bytes(answer.into_body(), 4096)
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["detail"], "not ready: the chain does not answer");
    }

    #[tokio::test]
    async fn a_probe_that_hangs_is_down_after_the_timeout() {
        tokio::time::pause();
        let readiness = Readiness::new("test").needs("server", || {
            Box::pin(std::future::pending::<std::result::Result<(), String>>())
        });
        let report = readiness.check().await;
        assert_eq!(report.0.get("server"), Some(&false));
    }

    #[test]
    fn an_outage_is_logged_when_it_starts_every_30_s_and_when_it_ends() {
        let mut outage = Outage::new("medledger server: indexing the chain");
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(
            outage.pause(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        assert_eq!(
            outage.failed_at(at(0), &"connection refused").as_deref(),
            Some("medledger server: indexing the chain: connection refused")
        );
        // Ten more attempts within 30 s: nothing said; the pause grows to 5 s.
        for s in 1..=10 {
            assert_eq!(outage.failed_at(at(s), &"connection refused"), None);
        }
        assert_eq!(
            outage.pause(Duration::from_millis(100)),
            Duration::from_secs(5)
        );
        assert_eq!(
            outage.failed_at(at(31), &"connection refused").as_deref(),
            Some(
                "medledger server: indexing the chain: still failing after 31 s, \
                 12 attempts: connection refused"
            )
        );
        assert_eq!(
            outage.worked_at(at(40)).as_deref(),
            Some(
                "medledger server: indexing the chain: working again after 40 s, 12 failed attempts"
            )
        );
        assert_eq!(outage.worked_at(at(41)), None);
        assert_eq!(
            outage.pause(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
