//! Alert webhooks: a patient (or an app acting for them) names an HTTP
//! endpoint and a shared secret; every alert the patient's preferences
//! deliver is POSTed there as JSON, oldest first, signed with
//! `X-Medledger-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
//! Delivery is at least once: an alert is retried, with backoff, until the
//! endpoint answers 2xx, and only then the next one is sent; the receiver
//! drops repeats by `id` (also in `X-Medledger-Alert-Id`).
//!
//! Only `http://` endpoints are reached by this build (a relay on the same
//! host or network, such as the hospital's notification service).

use crate::State;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use medledger_storage::sqlx::{self, Row};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait between two attempts at one endpoint.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A patient's webhook.
#[derive(Debug, Clone)]
struct Hook {
    patient: [u8; 32],
    url: String,
    secret: String,
    delivered: u64,
}

/// Sets (or with `None` removes) the patient's webhook; delivery starts
/// with the alerts after `after`.
pub(crate) async fn set(
    state: &State,
    patient: &[u8; 32],
    hook: Option<(&str, &str)>,
    after: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM alert_webhooks WHERE patient = $1")
        .bind(patient.to_vec())
        .execute(state.db.pool())
        .await?;
    if let Some((url, secret)) = hook {
        sqlx::query(
            "INSERT INTO alert_webhooks (patient, url, secret, delivered) VALUES ($1, $2, $3, $4)",
        )
        .bind(patient.to_vec())
        .bind(url)
        .bind(secret)
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .execute(state.db.pool())
        .await?;
    }
    Ok(())
}

/// The URL of the patient's webhook, if any.
pub(crate) async fn url(state: &State, patient: &[u8; 32]) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query("SELECT url FROM alert_webhooks WHERE patient = $1")
        .bind(patient.to_vec())
        .fetch_optional(state.db.pool())
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get("url")?),
        None => None,
    })
}

/// Whether `url` is one this build can reach.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("webhook {url:?}: only http:// endpoints are supported"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("webhook {url:?} names no host"));
    }
    Ok(())
}

/// Delivers alerts to every webhook, forever.
pub(crate) async fn run(state: Arc<State>, every: Duration) {
    let mut backoff: std::collections::HashMap<[u8; 32], (Duration, tokio::time::Instant)> =
        std::collections::HashMap::new();
    loop {
        let hooks = match hooks(&state).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("medledger server: reading webhooks: {e}");
                Vec::new()
            }
        };
        for hook in hooks {
            if backoff
                .get(&hook.patient)
                .is_some_and(|(_, until)| tokio::time::Instant::now() < *until)
            {
                continue;
            }
            match deliver(&state, &hook).await {
                Ok(()) => {
                    backoff.remove(&hook.patient);
                }
                Err(e) => {
                    let wait = backoff
                        .get(&hook.patient)
                        .map_or(Duration::from_millis(200), |(w, _)| {
                            (*w * 2).min(MAX_BACKOFF)
                        });
                    eprintln!(
                        "medledger server: webhook {}: {e}; again in {wait:?}",
                        hook.url
                    );
                    state.metrics.add(
                        "medledger_server_webhook_failures_total",
                        "Webhook deliveries that failed (and will be retried).",
                        &[],
                        1,
                    );
                    backoff.insert(hook.patient, (wait, tokio::time::Instant::now() + wait));
                }
            }
        }
        let mut newest = state.alerts.follow();
        let _ = tokio::time::timeout(every, newest.changed()).await;
    }
}

async fn hooks(state: &State) -> Result<Vec<Hook>, sqlx::Error> {
    let rows = sqlx::query("SELECT patient, url, secret, delivered FROM alert_webhooks")
        .fetch_all(state.db.pool())
        .await?;
    rows.into_iter()
        .map(|r| {
            let patient: Vec<u8> = r.try_get("patient")?;
            Ok(Hook {
                patient: patient.as_slice().try_into().unwrap_or([0; 32]),
                url: r.try_get("url")?,
                secret: r.try_get("secret")?,
                delivered: u64::try_from(r.try_get::<i64, _>("delivered")?).unwrap_or(0),
            })
        })
        .collect()
}

/// Sends the hook's pending alerts one by one, recording each delivery.
async fn deliver(state: &State, hook: &Hook) -> Result<(), String> {
    let alerts = state
        .alerts
        .list(&hook.patient, hook.delivered, 100)
        .await
        .map_err(|e| e.to_string())?;
    for alert in alerts {
        let body = serde_json::to_vec(&alert).map_err(|e| e.to_string())?;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, hook.secret.as_bytes());
        let signature = hex::encode(ring::hmac::sign(&key, &body));
        post(&hook.url, &body, &signature, alert.id).await?;
        sqlx::query("UPDATE alert_webhooks SET delivered = $1 WHERE patient = $2")
            .bind(i64::try_from(alert.id).unwrap_or(i64::MAX))
            .bind(hook.patient.to_vec())
            .execute(state.db.pool())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One POST over HTTP/1.1; Ok on a 2xx answer.
async fn post(url: &str, body: &[u8], signature: &str, id: u64) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or("not an http:// URL")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .map_err(|_| "connecting timed out".to_owned())?
    .map_err(|e| format!("connecting: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header("host", authority)
        .header("content-type", "application/json")
        .header("x-medledger-signature", format!("sha256={signature}"))
        .header("x-medledger-alert-id", id.to_string())
        .body(Full::new(bytes::Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .map_err(|_| "no answer in 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered {status}"))
    }
}
