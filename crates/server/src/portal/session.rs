//! Signing in with a chain key, sessions, and signed off-chain requests.
//!
//! Sign-in: `POST /portal/v1/challenge` gives a message with a fresh
//! nonce; the page signs it (EIP-191 `personal_sign`) with the key the
//! person holds and sends it with the person's certificate; `POST
//! /portal/v1/session` recovers the account, verifies the certificate as a
//! handshake would (our CA, validity, CRLs), checks that it names that
//! account and is the one the Registry records for it, asks the Registry
//! what the account is (admin, staff, patient) and sets an HttpOnly
//! session cookie. Every request of the session checks the certificate
//! and the Registry again, so revoking the certificate, or the Registry
//! removing the account or recording another certificate, ends it.
//!
//! Sessions live in SQL (the token's SHA-256 only): they outlive a restart
//! and every server of the database knows them; an account has at most
//! [`MAX_SESSIONS_PER_ACCOUNT`]. Challenges hold no state: each carries its
//! time and an HMAC by a key the servers of the database share, so a flood
//! of them costs nothing to keep; an answered one is taken once, in SQL,
//! like a signed request.

use super::events::text_or;
use crate::State;
use crate::answer::{Refused, json_response, refused};
use crate::caller::{Caller, Certificate, Via};
use crate::failure::{Doing, Failure};
use alloy::primitives::{Address, Signature};
use axum::body::Body;
use axum::extract::{Extension, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use medledger_contracts::StaffRole;
use medledger_pki::Role;
use medledger_protocol::portal::{
    SIGN_IN, challenge_message, challenge_parts, signed_request_text, valid_nonce,
};
use medledger_protocol::{ProblemType, now_ms};
use medledger_storage::Db;
use medledger_storage::sqlx;
use medledger_storage::sqlx::Row;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};
use std::collections::HashMap;

/// The cookie that carries a session.
const COOKIE: &str = "medledger_session";
/// How long a session lasts.
const SESSION_MS: u64 = 8 * 3600 * 1000;
/// How long a sign-in challenge may be answered.
const CHALLENGE_MS: u64 = 5 * 60 * 1000;
/// How far a signed request's time may be from ours.
const SIGNED_REQUEST_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Most live sessions of one account (its oldest end first).
const MAX_SESSIONS_PER_ACCOUNT: i64 = 16;
/// The largest signed off-chain request body.
const MAX_SIGNED_BODY: usize = 1 << 20;

/// The portal's sessions (in SQL) and the key of its challenges.
pub(crate) struct Sessions {
    /// Authenticates the challenges the servers of this database issue.
    challenge_key: hmac::Key,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

/// A challenge's nonce, once its tag and time check out.
struct Challenge {
    random: String,
    issued_ms: u64,
}

impl Sessions {
    /// The sessions of the portal on `db`, with the challenge key every
    /// server of the database shares (made by the first).
    pub(crate) async fn open(db: &Db) -> Result<Sessions, sqlx::Error> {
        let mut fresh = [0u8; 32];
        SystemRandom::new()
            .fill(&mut fresh)
            .expect("the system random generator works");
        sqlx::query(
            "INSERT INTO portal_secrets (name, secret) VALUES ('challenge', $1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(fresh.to_vec())
        .execute(db.pool())
        .await?;
        let secret: Vec<u8> =
            sqlx::query("SELECT secret FROM portal_secrets WHERE name = 'challenge'")
                .fetch_one(db.pool())
                .await?
                .try_get("secret")?;
        Ok(Sessions {
            challenge_key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        })
    }

    /// The caller of a live session whose certificate the server still
    /// accepts; a session past its certificate ends here.
    pub(crate) async fn caller(&self, state: &State, token: &str) -> Option<Caller> {
        let row = sqlx::query(
            "SELECT account, role, certificate FROM portal_sessions WHERE token_sha256 = $1 AND expires_ms > $2",
        )
        .bind(token_hash(token))
        .bind(i64::try_from(now_ms()).unwrap_or(i64::MAX))
        .fetch_optional(state.db.pool())
        .await;
        let row = match row {
            Ok(row) => row?,
            Err(e) => {
                tracing::warn!("medledger server: reading a portal session: {e}");
                return None;
            }
        };
        let account: Vec<u8> = row.try_get("account").ok()?;
        let role: String = row.try_get("role").ok()?;
        let pem: String = row.try_get("certificate").ok()?;
        let Some(certificate) = Certificate::verified_from_pem(&pem, &state.client_auth) else {
            self.close(state, token).await;
            return None;
        };
        let account = Address::try_from(account.as_slice()).ok()?;
        let role: Role = role.parse().ok()?;
        // The Registry may have removed the account, revoked it or
        // recorded another certificate since: then the session is over.
        match standing(state, account, &certificate.identity.fingerprint).await {
            Ok(Some(now)) if now == role => {}
            Ok(_) => {
                self.close(state, token).await;
                return None;
            }
            Err(e) => {
                tracing::warn!("medledger server: checking a portal session: {e}");
                return None;
            }
        }
        Some(Caller {
            role,
            account: Some(account),
            name: account.to_string(),
            via: Via::Key,
            certificate,
        })
    }

    /// Opens a session for `caller` (signed in by key); its token. The
    /// account's oldest sessions beyond the cap end.
    async fn start(&self, state: &State, caller: &Caller) -> Result<String, sqlx::Error> {
        let token = random_hex();
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        let account = caller.account.map(|a| a.to_vec()).unwrap_or_default();
        let pem = caller.certificate.to_pem();
        let pool = state.db.pool();
        sqlx::query("DELETE FROM portal_sessions WHERE expires_ms <= $1")
            .bind(now)
            .execute(pool)
            .await?;
        sqlx::query(
            "INSERT INTO portal_sessions (token_sha256, account, role, certificate, expires_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash(&token))
        .bind(account.clone())
        .bind(caller.role.name())
        .bind(pem)
        .bind(now.saturating_add(i64::try_from(SESSION_MS).unwrap_or(i64::MAX)))
        .execute(pool)
        .await?;
        sqlx::query(
            "DELETE FROM portal_sessions WHERE account = $1 AND token_sha256 NOT IN \
             (SELECT token_sha256 FROM portal_sessions WHERE account = $1 ORDER BY expires_ms DESC LIMIT $2)",
        )
        .bind(account)
        .bind(MAX_SESSIONS_PER_ACCOUNT)
        .execute(pool)
        .await?;
        Ok(token)
    }

    async fn close(&self, state: &State, token: &str) {
        let closed = sqlx::query("DELETE FROM portal_sessions WHERE token_sha256 = $1")
            .bind(token_hash(token))
            .execute(state.db.pool())
            .await;
        if let Err(e) = closed {
            tracing::warn!("medledger server: ending a portal session: {e}");
        }
    }

    /// A new challenge for `portal`: the message to sign. Its nonce is
    /// `RANDOM-ISSUED_MS-TAG`, the tag an HMAC of the rest.
    fn challenge(&self, portal: &str) -> String {
        let random = random_hex();
        challenge_message(portal, &random, now_ms(), &self.challenge_key)
    }

    /// The nonce of a challenge this portal's servers issued, unaltered and
    /// in time, that `message` answers.
    fn check(&self, message: &str) -> Option<Challenge> {
        let (portal, random, issued_ms) = challenge_parts(message)?;
        let issued = challenge_message(portal, random, issued_ms, &self.challenge_key);
        let fresh = now_ms().saturating_sub(issued_ms) <= CHALLENGE_MS && issued_ms <= now_ms();
        (fresh && issued == message).then(|| Challenge {
            random: random.to_owned(),
            issued_ms,
        })
    }
}

/// What a session token is stored as.
fn token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random generator works");
    hex::encode(bytes)
}

/// The session token in the request's cookies.
pub(crate) fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The account whose key made `signature` (65 bytes hex, `r || s || v`)
/// over `message` as EIP-191 `personal_sign`.
pub(crate) fn signer_of(message: &[u8], signature: &str) -> Result<Address, Refused> {
    let bad = |why: String| refused(ProblemType::BadRequestSignature, why);
    let bytes = hex::decode(signature.trim().trim_start_matches("0x"))
        .map_err(|e| bad(format!("the signature is not hex: {e}")))?;
    let signature = Signature::from_raw(&bytes)
        .map_err(|e| bad(format!("the signature is not 65 bytes r, s, v: {e}")))?;
    signature
        .recover_address_from_msg(message)
        .map_err(|e| bad(format!("no account signed this: {e}")))
}

/// The portal as the browser named it (`host[:port]`): HTTP/2 names it in
/// the URI, HTTP/1.1 in `Host`.
fn portal_host<'a>(headers: &'a HeaderMap, uri: &'a axum::http::Uri) -> &'a str {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    uri.authority()
        .map(|a| a.as_str())
        .or(host)
        .unwrap_or("medledger")
}

/// `POST /portal/v1/challenge`: a message to sign, valid for five minutes;
/// a few a second per address (429 `rate-limited` with `Retry-After`).
pub(super) async fn challenge(
    AxState(state): AxState<std::sync::Arc<State>>,
    from: Option<Extension<medledger_pki::https::RemoteAddr>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, Refused> {
    if let Some(Extension(from)) = from
        && let Err(wait) = state.portal.take_challenge(from.0.ip())
    {
        return Err(refused(
            ProblemType::RateLimited,
            "too many sign-in challenges from this address; wait a moment",
        )
        .retry_after(wait.as_secs().max(1)));
    }
    let message = state.portal.sessions.challenge(portal_host(&headers, &uri));
    Ok(json_response(&json!({ "message": message })))
}

/// `POST /portal/v1/session` with `{"message", "signature", "certificate"}`
/// (the certificate chain, PEM, leaf first).
pub(super) async fn sign_in(
    AxState(state): AxState<std::sync::Arc<State>>,
    body: Body,
) -> Result<Response, Refused> {
    #[derive(serde::Deserialize)]
    struct Answer {
        message: String,
        signature: String,
        certificate: Option<String>,
    }
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 10).await else {
        return Err(refused(
            ProblemType::TooLarge,
            "a sign-in is at most 16 KiB",
        ));
    };
    let answer: Answer = serde_json::from_slice(&bytes).map_err(|e| {
        refused(
            ProblemType::Malformed,
            format!(
                "expected {{\"message\": ..., \"signature\": \"0x...\", \"certificate\": \"-----BEGIN CERTIFICATE-----...\"}}: {e}"
            ),
        )
    })?;
    if !answer.message.starts_with(SIGN_IN) {
        return Err(refused(
            ProblemType::Malformed,
            "sign the message POST /portal/v1/challenge gave, unchanged",
        ));
    }
    let Some(challenge) = state.portal.sessions.check(&answer.message) else {
        return Err(refused(
            ProblemType::Forbidden,
            "this sign-in message is not one this portal gave, or it expired: ask for a new challenge",
        ));
    };
    // Each challenge is answered once, whoever answers it (under no
    // account: the zero address signs nothing).
    let until = challenge.issued_ms + CHALLENGE_MS;
    let fresh = take_nonce(
        &state,
        Address::ZERO,
        &format!("challenge-{}", challenge.random),
        until,
    )
    .await
    .doing("recording a sign-in")?;
    if !fresh {
        return Err(refused(
            ProblemType::Forbidden,
            "this sign-in message was used already: ask for a new challenge",
        ));
    }
    let account = signer_of(answer.message.as_bytes(), &answer.signature)?;
    let Some(pem) = answer.certificate else {
        return Err(refused(
            ProblemType::Malformed,
            "a sign-in by key needs your certificate too (\"certificate\": the PEM of PREFIX.crt)",
        ));
    };
    let certificate = certificate_of(&state, account, &pem).await?;
    let role = role_of(&state, account).await?.ok_or_else(|| {
        refused(
            ProblemType::Forbidden,
            format!("the Registry knows {account} as no admin, staff member or patient"),
        )
    })?;
    if role != certificate.identity.role {
        return Err(refused(
            ProblemType::WrongRole,
            format!(
                "the certificate says {}, the Registry knows {account} as {role}",
                certificate.identity.role
            ),
        ));
    }
    let caller = Caller {
        role,
        account: Some(account),
        name: account.to_string(),
        via: Via::Key,
        certificate,
    };
    let token = state
        .portal
        .sessions
        .start(&state, &caller)
        .await
        .doing("opening a portal session")?;
    let mut response = describe(&state, &caller).await?;
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_MS / 1000
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

/// `GET /portal/v1/session`: who is signed in, or 401.
pub(super) async fn show(
    AxState(state): AxState<std::sync::Arc<State>>,
    caller: Option<Extension<Caller>>,
) -> Result<Response, Refused> {
    let Some(Extension(caller)) = caller else {
        return Err(refused(
            ProblemType::SignInRequired,
            "sign in with your client certificate or your chain key",
        ));
    };
    describe(&state, &caller).await
}

/// `DELETE /portal/v1/session`.
pub(super) async fn sign_out(
    AxState(state): AxState<std::sync::Arc<State>>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = cookie(&headers) {
        state.portal.sessions.close(&state, token).await;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "medledger_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    response
}

/// The person's certificate from `pem` (leaf first), if it is ours and
/// valid now, names `account`, and is the one the Registry records for it.
async fn certificate_of(
    state: &State,
    account: Address,
    pem: &str,
) -> Result<Certificate, Refused> {
    let chain = medledger_pki::files::der_blocks(pem.as_bytes(), "CERTIFICATE")
        .map_err(|e| refused(ProblemType::Malformed, format!("certificate: {e}")))?;
    let (leaf, intermediates) = chain
        .split_first()
        .expect("der_blocks gives at least one block");
    let identity = state
        .client_auth
        .verify_certificate(leaf, intermediates, rustls::pki_types::UnixTime::now())
        .map_err(|rejection| {
            refused(
                rejection.problem_type(),
                format!("certificate: {rejection}"),
            )
        })?;
    if !identity.role.is_person() || identity.address() != Some(account) {
        return Err(refused(
            ProblemType::Forbidden,
            format!(
                "the certificate is not one of {account}'s: sign in with the certificate of the key that signed"
            ),
        ));
    }
    let recorded = recorded_certificate(state, account).await?;
    if recorded.0 != identity.fingerprint {
        let why = if recorded.is_zero() {
            "the Registry records no certificate for it (revoked, or never recorded: an admin records it with `medledger admin person certificate`)"
        } else {
            "the Registry records another certificate for it"
        };
        return Err(refused(
            ProblemType::Forbidden,
            format!("{account} may not sign in with this certificate: {why}"),
        ));
    }
    Ok(Certificate {
        identity: std::sync::Arc::new(identity),
        chain: chain.into(),
    })
}

/// What the account is by the Registry while `fingerprint` is its
/// recorded certificate; `None` once it is not (revoked, replaced).
async fn standing(
    state: &State,
    account: Address,
    fingerprint: &[u8; 32],
) -> Result<Option<Role>, Failure> {
    if recorded_certificate(state, account).await?.0 != *fingerprint {
        return Ok(None);
    }
    role_of(state, account).await
}

/// The fingerprint of the certificate the Registry records for `account`
/// (zero: none, or revoked).
async fn recorded_certificate(
    state: &State,
    account: Address,
) -> Result<alloy::primitives::B256, Failure> {
    state
        .view
        .contracts()
        .registry()
        .certificateOf(account)
        .call()
        .await
        .doing("asking the Registry for a certificate")
}

/// What the account is, by the Registry: admin first, then staff, then
/// patient.
async fn role_of(state: &State, account: Address) -> Result<Option<Role>, Failure> {
    let registry = state.view.contracts().registry();
    let doing = "asking the Registry for an account's role";
    if registry.isAdmin(account).call().await.doing(doing)? {
        return Ok(Some(Role::Admin));
    }
    let staff = registry.staff(account).call().await.doing(doing)?;
    if staff.active {
        match StaffRole::from_code(staff.role) {
            Some(StaffRole::Doctor) => return Ok(Some(Role::Doctor)),
            Some(StaffRole::Nurse) => return Ok(Some(Role::Nurse)),
            None => {}
        }
    }
    let patient = registry
        .patientOfAccount(account)
        .call()
        .await
        .doing(doing)?;
    Ok((!patient.is_zero()).then_some(Role::Patient))
}

/// The session JSON of `caller`.
async fn describe(state: &State, caller: &Caller) -> Result<Response, Refused> {
    let contracts = state.view.contracts();
    let chain_id = alloy::providers::Provider::get_chain_id(contracts.provider())
        .await
        .doing("asking the chain for its id")?;
    let patient = match (caller.role, caller.account) {
        (Role::Patient, Some(account)) => {
            match contracts.registry().patientOfAccount(account).call().await {
                Ok(p) if !p.is_zero() => Some(p.to_string()),
                _ => None,
            }
        }
        _ => None,
    };
    let patients = match (caller.role, caller.account) {
        (Role::Doctor | Role::Nurse, Some(me)) => cared_for(state, me).await?,
        _ => Vec::new(),
    };
    Ok(json_response(&json!({
        "role": caller.role.to_string(),
        "account": caller.account.map(|a| a.to_string()),
        "name": caller.name,
        "via": caller.via.name(),
        "patient": patient,
        "chain_id": chain_id,
        "patients": patients,
    })))
}

/// The admitted patients `carer` is assigned to now, from the indexed
/// Registry events.
async fn cared_for(state: &State, carer: Address) -> Result<Vec<Value>, Failure> {
    let events = super::events::indexed(
        state,
        &[
            "PatientAdmitted",
            "PatientTransferred",
            "PatientDischarged",
            "CarerAssigned",
            "CarerReleased",
        ],
        false,
        None,
    )
    .await
    .doing("reading whom a carer cares for")?;
    let me = carer.to_string().to_lowercase();
    let mut wards: HashMap<String, Value> = HashMap::new();
    let mut mine: Vec<String> = Vec::new();
    for e in events {
        let arg = |k: &str| e.args[k].as_str().unwrap_or("").to_owned();
        let patient = arg("patientRef");
        match e.name.as_str() {
            "PatientAdmitted" | "PatientTransferred" => {
                wards.insert(
                    patient.clone(),
                    json!({
                        "patient": patient,
                        "department": text_or(&arg("department")),
                        "room": text_or(&arg("room")),
                        "bed": text_or(&arg("bed")),
                    }),
                );
                if e.name == "PatientAdmitted" {
                    // A new admission starts without carers; each comes as
                    // a CarerAssigned event.
                    mine.retain(|p| *p != patient);
                }
            }
            "PatientDischarged" => {
                wards.remove(&patient);
                mine.retain(|p| *p != patient);
            }
            "CarerAssigned" if arg("carer").to_lowercase() == me && !mine.contains(&patient) => {
                mine.push(patient);
            }
            "CarerReleased" if arg("carer").to_lowercase() == me => {
                mine.retain(|p| *p != patient);
            }
            _ => {}
        }
    }
    Ok(mine.iter().filter_map(|p| wards.get(p).cloned()).collect())
}

/// Checks that an off-chain state change was signed by the caller, for
/// this portal, once: headers `x-medledger-signed-at` (Unix ms, within five
/// minutes), `x-medledger-nonce` (16 to 64 letters, digits, `-` or `_`,
/// fresh for each request) and `x-medledger-signature` over
/// `"medledger portal request\nportal: {HOST}\nnonce: {NONCE}\n{METHOD} {PATH}\n{signed-at}\n{BODY}"`.
/// The nonce is remembered in SQL until the time can no longer pass, so a
/// copy is refused (409 `replayed-request`) also after a restart and by
/// every server sharing the database. Returns the body, read whole.
pub(super) async fn check_signed_request(
    state: &State,
    caller: &Caller,
    parts: &Parts,
    body: Body,
) -> Result<Body, Refused> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(at), Some(nonce), Some(signature)) = (
        header("x-medledger-signed-at"),
        header("x-medledger-nonce"),
        header("x-medledger-signature"),
    ) else {
        return Err(refused(
            ProblemType::BadRequestSignature,
            "a change must be signed with your chain key: x-medledger-signed-at, x-medledger-nonce and x-medledger-signature",
        ));
    };
    let Ok(at_ms) = at.parse::<u64>() else {
        return Err(refused(
            ProblemType::Malformed,
            "x-medledger-signed-at is Unix milliseconds",
        ));
    };
    if !valid_nonce(nonce) {
        return Err(refused(
            ProblemType::Malformed,
            "x-medledger-nonce is 16 to 64 letters, digits, - or _",
        ));
    }
    if now_ms().abs_diff(at_ms) > SIGNED_REQUEST_WINDOW_MS {
        return Err(refused(
            ProblemType::StaleTimestamp,
            "x-medledger-signed-at is more than five minutes from the server's clock",
        ));
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_SIGNED_BODY).await else {
        return Err(refused(
            ProblemType::TooLarge,
            format!("a signed request is at most {MAX_SIGNED_BODY} bytes"),
        ));
    };
    let text = signed_request_text(
        portal_host(&parts.headers, &parts.uri),
        nonce,
        parts.method.as_str(),
        parts.uri.path(),
        at_ms,
        &bytes,
    );
    let signer = signer_of(&text, signature)?;
    if Some(signer) != caller.account {
        return Err(refused(
            ProblemType::BadRequestSignature,
            format!(
                "the request is signed by {signer}, not by the signed-in account {} (for this portal, with this nonce)",
                caller.name
            ),
        ));
    }
    let fresh = take_nonce(state, signer, nonce, at_ms + SIGNED_REQUEST_WINDOW_MS)
        .await
        .doing("recording a signed request")?;
    if !fresh {
        return Err(refused(
            ProblemType::ReplayedRequest,
            format!("a request signed by {signer} with nonce {nonce} was already taken"),
        ));
    }
    Ok(Body::from(bytes))
}

/// Records that `signer` used `nonce`, until `expires_ms`: false if it
/// already had. Forgets nonces whose time has passed.
async fn take_nonce(
    state: &State,
    signer: Address,
    nonce: &str,
    expires_ms: u64,
) -> Result<bool, sqlx::Error> {
    let pool = state.db.pool();
    sqlx::query("DELETE FROM signed_requests WHERE expires_ms < $1")
        .bind(i64::try_from(now_ms()).unwrap_or(i64::MAX))
        .execute(pool)
        .await?;
    let taken = sqlx::query(
        "INSERT INTO signed_requests (signer, nonce, expires_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(signer.as_slice().to_vec())
    .bind(nonce)
    .bind(i64::try_from(expires_ms).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(taken.rows_affected() == 1)
}
