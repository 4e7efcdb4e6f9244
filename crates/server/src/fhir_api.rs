//! The FHIR R4 REST read API, `/fhir/r4/`: what `/v1/records` and
//! `/v1/audit` serve, to any FHIR client, with the same access.
//!
//! - `GET metadata`: the CapabilityStatement, for any caller.
//! - `GET Observation?[patient=][&code=][&date=]` and `GET Observation/{id}`:
//!   a doctor or nurse holding a usable access request, named by the
//!   `X-Access-Request` header or the `request` search parameter, reads the
//!   Observations of its scope; every search and read, served or refused,
//!   is an `AccessEvent` with its alert, as `/v1/records`.
//! - `GET AuditEvent?patient=` and `GET Consent?patient=`: the patient's
//!   record reads and consents in force, for the patient or an admin.
//! - `GET Device/{id}`: a device the Registry knows, by its EPC in hex,
//!   for any person.
//!
//! Searches answer `searchset` Bundles with `total` and `self`, `next` and
//! `previous` links, paged by `_count` and `_offset`; an unknown search
//! parameter is refused, not ignored. Errors are `OperationOutcome`s, and an
//! unavailable chain or database is named as such, never by its own error.

use crate::State;
use crate::answer::{Refused, refused};
use crate::answer::{bounded, fhir_response, problem};
use crate::caller::Caller;
use crate::failure::Doing;
use crate::records::Selection;
use alloy::primitives::{B256, FixedBytes};
use axum::Router;
use axum::extract::{Extension, Path, Request, State as AxState};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use medledger_contracts::text_of;
use medledger_pki::{Epc, Role};
use medledger_protocol::catalogue::CATALOGUE;
use medledger_protocol::{ProblemType, fhir, now_ms};
use serde_json::{Value, json};
use std::sync::Arc;

/// Where the API is, under the server's address.
pub(crate) const BASE_PATH: &str = "/fhir/r4";
/// The header that names the access request a read relies on.
pub const REQUEST_HEADER: &str = "x-access-request";
/// A page's size when `_count` does not say.
const DEFAULT_COUNT: usize = 50;
/// The largest page.
const MAX_COUNT: usize = 1000;

pub(crate) fn router() -> Router<Arc<State>> {
    Router::new()
        .route("/metadata", get(metadata))
        .route("/Observation", get(observations))
        .route("/Observation/{id}", get(observation))
        .route("/AuditEvent", get(audit_events))
        .route("/Consent", get(consents))
        .route("/Device/{id}", get(device))
        .fallback(|uri: Uri| async move {
            problem(
                ProblemType::NotFound,
                format!(
                    "{} is not part of this API; see {BASE_PATH}/metadata",
                    bounded(uri.path())
                ),
            )
        })
        .layer(axum::middleware::from_fn(outcomes_only))
}

/// An `OperationOutcome` answer with one error issue.
fn outcome(status: StatusCode, code: &str, text: &str) -> Response {
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "error", "code": code, "diagnostics": text }],
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        body.to_string(),
    )
        .into_response()
}

/// Middleware: every error answer of this API is an `OperationOutcome`.
/// The handlers refuse as the rest of the server does (problem+json),
/// and a refusal no handler wrote (another method, a path the router
/// could not parse) is one too: each becomes an `OperationOutcome` with
/// the same status and text, except that an unavailable chain or database
/// is logged here and named to the client only as unavailable.
async fn outcomes_only(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    let problem: Value = serde_json::from_slice(&body).unwrap_or_default();
    let kind = problem["type"].as_str().and_then(ProblemType::parse);
    let detail = problem["detail"].as_str().unwrap_or_default();
    let code = match kind {
        Some(ProblemType::NotFound) => "not-found",
        Some(ProblemType::Forbidden | ProblemType::WrongRole) => "forbidden",
        Some(ProblemType::MethodNotAllowed) => "not-supported",
        Some(ProblemType::Unavailable | ProblemType::StorageUnavailable) => "transient",
        _ if status == StatusCode::METHOD_NOT_ALLOWED => "not-supported",
        _ if status.is_server_error() => "exception",
        _ => "invalid",
    };
    let text = match (kind, status) {
        (_, StatusCode::METHOD_NOT_ALLOWED) => {
            format!("this API only reads: {method} is not supported")
        }
        (Some(ProblemType::Unavailable | ProblemType::StorageUnavailable), _) | (None, _)
            if status.is_server_error() =>
        {
            tracing::warn!(cause = detail, "medledger server: FHIR API: unavailable");
            "the chain or the database cannot be reached now; try again".to_owned()
        }
        (None, _) => "the request could not be read".to_owned(),
        _ => detail.to_owned(),
    };
    outcome(status, code, &text)
}

/// A refusal for a request this API cannot read.
fn malformed(text: impl Into<String>) -> Refused {
    refused(ProblemType::Malformed, text)
}

/// The search parameters of a request, in order, repeats kept.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(uri: &Uri, known: &[&str]) -> Result<Query, Refused> {
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        if let Some((name, _)) = pairs
            .iter()
            .find(|(name, _)| !known.contains(&name.as_str()))
        {
            return Err(malformed(format!(
                "unknown search parameter `{}`; this search knows {}",
                medledger_pki::https::bounded(name),
                known.join(", ")
            )));
        }
        Ok(Query(pairs))
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `_offset` and `_count`: the page asked for.
    fn page(&self) -> Result<(usize, usize), Refused> {
        let number = |name: &str, default: usize| match self.one(name) {
            None => Ok(default),
            Some(v) => v.parse::<usize>().map_err(|_| {
                malformed(format!(
                    "`{name}` must be a whole number, not `{}`",
                    bounded(v)
                ))
            }),
        };
        Ok((
            number("_offset", 0)?,
            number("_count", DEFAULT_COUNT)?.min(MAX_COUNT),
        ))
    }

    /// The patient named by `patient` (or `subject`): `Patient/HEX` or HEX.
    fn patient(&self) -> Result<Option<[u8; 32]>, Refused> {
        let Some(named) = self.one("patient").or_else(|| self.one("subject")) else {
            return Ok(None);
        };
        crate::subjects::patient_ref(named.trim_start_matches("Patient/"))
            .map(Some)
            .ok_or_else(|| {
                malformed(format!(
                    "`patient` must be Patient/<patientRef> (64 hex digits), not `{}`",
                    bounded(named)
                ))
            })
    }
}

/// `https://<the address the client used>/fhir/r4`.
fn base_url(headers: &HeaderMap, uri: &Uri) -> String {
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost".into());
    format!("https://{authority}{BASE_PATH}")
}

/// A `collection` Bundle's page as a `searchset` Bundle: absolute
/// `fullUrl`s, `total`, and links that page through the same search.
fn searchset(
    mut bundle: Value,
    base: &str,
    kind: &str,
    query: &Query,
    total: u64,
    (offset, count): (usize, usize),
) -> Value {
    let link = |relation: &str, at: usize| {
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in query
            .0
            .iter()
            .filter(|(n, _)| n != "_offset" && n != "_count")
        {
            url.append_pair(name, value);
        }
        url.append_pair("_count", &count.to_string());
        url.append_pair("_offset", &at.to_string());
        json!({ "relation": relation, "url": format!("{base}/{kind}?{}", url.finish()) })
    };
    let mut links = vec![link("self", offset)];
    let shown = bundle["entry"].as_array().map_or(0, Vec::len);
    if (offset + shown) < usize::try_from(total).unwrap_or(usize::MAX) && shown > 0 {
        links.push(link("next", offset + shown));
    }
    if offset > 0 {
        links.push(link("previous", offset.saturating_sub(count)));
    }
    for entry in bundle["entry"].as_array_mut().into_iter().flatten() {
        let resource = &entry["resource"];
        let url = format!(
            "{base}/{}/{}",
            resource["resourceType"].as_str().unwrap_or(kind),
            resource["id"].as_str().unwrap_or("")
        );
        entry["fullUrl"] = json!(url);
        entry["search"] = json!({ "mode": "match" });
    }
    bundle["type"] = json!("searchset");
    bundle["total"] = json!(total);
    bundle["link"] = json!(links);
    bundle
}

/// The page `(offset, count)` of `resources`, as a `searchset` Bundle.
fn paged(
    resources: Vec<Value>,
    base: &str,
    kind: &str,
    query: &Query,
    page: (usize, usize),
) -> Response {
    let total = resources.len() as u64;
    let shown = resources.into_iter().skip(page.0).take(page.1).collect();
    fhir_response(&searchset(
        fhir::bundle(shown, now_ms()),
        base,
        kind,
        query,
        total,
        page,
    ))
}

/// The access request a read relies on: the `X-Access-Request` header, or
/// the `request` search parameter.
fn request_of(headers: &HeaderMap, query: &Query) -> Result<u64, Refused> {
    let named = headers
        .get(REQUEST_HEADER)
        .and_then(|h| h.to_str().ok())
        .or_else(|| query.one("request"));
    let Some(named) = named else {
        return Err(malformed(
            "name the on-chain access request this read relies on: the X-Access-Request header or ?request=ID",
        ));
    };
    named.trim().parse().map_err(|_| {
        malformed(format!(
            "the access request must be a number, not `{}`",
            bounded(named)
        ))
    })
}

/// `GET /fhir/r4/Observation`: a search of the request's Observations.
async fn observations(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Refused> {
    let known = [
        "patient", "subject", "code", "date", "request", "_count", "_offset",
    ];
    let query = Query::of(&uri, &known)?;
    let selection = observation_search(&query)?;
    let request = request_of(&headers, &query)?;
    let page = crate::records::serve(&state, &caller, request, &selection).await?;
    Ok(fhir_response(&searchset(
        page.bundle,
        &base_url(&headers, &uri),
        "Observation",
        &query,
        page.total,
        (selection.offset, selection.count.unwrap_or(DEFAULT_COUNT)),
    )))
}

/// The [`Selection`] an Observation search asks for.
fn observation_search(query: &Query) -> Result<Selection, Refused> {
    let (offset, count) = query.page()?;
    let mut selection = Selection {
        patient: query.patient()?,
        codes: query
            .all("code")
            .flat_map(|list| list.split(','))
            .map(|token| token.rsplit('|').next().unwrap_or(token).to_owned())
            .collect(),
        offset,
        count: Some(count),
        ..Selection::default()
    };
    for date in query.all("date") {
        let (from, before) = date_bounds(date).ok_or_else(|| {
            malformed(format!(
                    "`date` must be a prefix (eq, ge, gt, le, lt) and a date or time such as 2026-12-04 or 2026-12-04T10:00:00Z, not `{}`",
                    bounded(date)
                ),
            )
        })?;
        if let Some(from) = from {
            selection.from_ms = Some(selection.from_ms.map_or(from, |f| f.max(from)));
        }
        if let Some(before) = before {
            selection.before_ms = Some(selection.before_ms.map_or(before, |b| b.min(before)));
        }
    }
    Ok(selection)
}

/// A FHIR `date` search value as bounds, Unix ms: at or after, before.
/// The value's precision makes it an interval (`2026-12-04` is that whole
/// day, UTC), which the prefix compares against.
fn date_bounds(param: &str) -> Option<(Option<u64>, Option<u64>)> {
    let (prefix, value) = match param.get(..2) {
        Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &param[2..]),
        _ => ("eq", param),
    };
    let (start, end) = interval(value)?;
    Some(match prefix {
        "eq" => (Some(start), Some(end)),
        "ge" => (Some(start), None),
        "gt" => (Some(end), None),
        "le" => (None, Some(end)),
        _ => (None, Some(start)),
    })
}

/// The interval, Unix ms, of a FHIR date or dateTime at its precision:
/// `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or `YYYY-MM-DDThh:mm[:ss[.fff]]` with
/// `Z` or an offset.
fn interval(value: &str) -> Option<(u64, u64)> {
    let (date, time) = value.split_once('T').unwrap_or((value, ""));
    let mut parts = date.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: Option<u32> = parts.next().map(str::parse).transpose().ok()?;
    let day: Option<u32> = parts.next().map(str::parse).transpose().ok()?;
    if parts.next().is_some() || date.len() < 4 {
        return None;
    }
    let start_day = days_from_civil(year, month.unwrap_or(1), day.unwrap_or(1))?;
    let ms = |days: i64| u64::try_from(days * 86_400_000).ok();
    if time.is_empty() {
        let end_day = match (month, day) {
            (None, _) => days_from_civil(year + 1, 1, 1)?,
            (Some(12), None) => days_from_civil(year + 1, 1, 1)?,
            (Some(m), None) => days_from_civil(year, m + 1, 1)?,
            (Some(_), Some(_)) => start_day + 1,
        };
        return Some((ms(start_day)?, ms(end_day)?));
    }
    day?;
    let (clock, offset_min) = if let Some(clock) = time.strip_suffix('Z') {
        (clock, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (clock, zone) = time.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':')?;
        (
            clock,
            sign * (h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?),
        )
    };
    let mut fields = clock.split(':');
    let hour: i64 = fields.next()?.parse().ok()?;
    let minute: i64 = fields.next()?.parse().ok()?;
    let second = fields.next();
    if fields.next().is_some() || hour > 23 || minute > 59 {
        return None;
    }
    let (second_ms, width) = match second {
        None => (0, 60_000),
        Some(s) => {
            let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
            let whole: i64 = whole.parse().ok()?;
            let digits = fraction.len().min(3);
            let fraction_ms: i64 = if digits == 0 {
                0
            } else {
                fraction[..digits].parse::<i64>().ok()? * 10_i64.pow(3 - digits as u32)
            };
            (whole * 1000 + fraction_ms, 10_i64.pow(3 - digits as u32))
        }
    };
    let start = start_day * 86_400_000 + (hour * 60 + minute - offset_min) * 60_000 + second_ms;
    Some((
        u64::try_from(start).ok()?,
        u64::try_from(start + width).ok()?,
    ))
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm); `None`
/// for a month or day out of range.
fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// `GET /fhir/r4/Observation/{id}`: one Observation of the request's
/// scope, with its ledger proof and, in its `meta`, the checkpoint and key
/// the proof leads to.
async fn observation(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Refused> {
    let query = Query::of(&uri, &["request"])?;
    let request = request_of(&headers, &query)?;
    let selection = Selection {
        id: Some(id.clone()),
        ..Selection::default()
    };
    let page = crate::records::serve(&state, &caller, request, &selection).await?;
    let Some(mut found) = page.bundle["entry"][0].get("resource").cloned() else {
        return Err(refused(
            ProblemType::NotFound,
            format!(
                "no Observation {} in the scope of request {request}",
                bounded(&id)
            ),
        ));
    };
    found["meta"]["extension"] = page.bundle["meta"]["extension"].clone();
    Ok(fhir_response(&found))
}

/// The patient an AuditEvent or Consent search is about: the patient's
/// own, or for an admin the one named by `patient`.
async fn subject(state: &State, caller: &Caller, query: &Query) -> Result<[u8; 32], Refused> {
    crate::subjects::subject_of(state, caller, query.patient()?).await
}

/// A search of one patient's resources, the patient's own or, for an
/// admin, those of the patient named by `patient`: `list` gives them all,
/// and the page is cut here.
async fn patient_search<F, Fut>(
    state: &State,
    caller: &Caller,
    headers: &HeaderMap,
    uri: &Uri,
    kind: &str,
    list: F,
) -> Result<Response, Refused>
where
    F: FnOnce([u8; 32]) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Value>, Refused>>,
{
    let query = Query::of(uri, &["patient", "subject", "_count", "_offset"])?;
    let page = query.page()?;
    let patient = subject(state, caller, &query).await?;
    let all = list(patient).await?;
    Ok(paged(all, &base_url(headers, uri), kind, &query, page))
}

/// `GET /fhir/r4/AuditEvent?patient=`: the patient's record reads.
async fn audit_events(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Refused> {
    let state = &state;
    patient_search(
        state,
        &caller,
        &headers,
        &uri,
        "AuditEvent",
        |patient| async move {
            crate::records::audit_events(state, &patient)
                .await
                .map(resources_of)
        },
    )
    .await
}

fn resources_of(mut bundle: Value) -> Vec<Value> {
    bundle["entry"]
        .as_array_mut()
        .map(|entries| entries.iter_mut().map(|e| e["resource"].take()).collect())
        .unwrap_or_default()
}

/// `GET /fhir/r4/Consent?patient=`: the patient's consents in force (and
/// those that lapsed since the chain last dropped them), as Consents.
async fn consents(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, Refused> {
    let state = &state;
    patient_search(
        state,
        &caller,
        &headers,
        &uri,
        "Consent",
        |patient| async move { grants(state, &patient).await },
    )
    .await
}

/// The patient's live grants as FHIR Consents.
async fn grants(state: &State, patient: &[u8; 32]) -> Result<Vec<Value>, Refused> {
    let consent = state.view.contracts().consent();
    let ids = consent.liveGrants(B256::from(*patient)).call().await?;
    let now = now_ms();
    let names = state.directory.all().await;
    let mut out = Vec::new();
    for id in ids {
        let g = consent.grantOf(id).call().await?;
        let scope = medledger_contracts::Scope(g.scope);
        let types: Vec<_> = CATALOGUE.iter().filter(|t| scope.contains(t)).collect();
        let grantee = (!g.grantee.is_zero()).then(|| g.grantee.to_string());
        let grantee_name = grantee.as_ref().and_then(|_| names.get(&g.grantee));
        let role = medledger_contracts::StaffRole::from_code(g.role).map(|r| r.name());
        out.push(fhir::consent(
            &fhir::Grant {
                id: u64::try_from(id).unwrap_or(u64::MAX),
                patient_ref: patient,
                grantee: grantee.as_deref(),
                grantee_name: grantee_name.map(String::as_str),
                role,
                scope: &types,
                purpose: &text_of(g.purpose),
                granted_ms: g.grantedAt * 1000,
                expiry_ms: (g.expiry != 0).then(|| g.expiry * 1000),
                revoked: g.revoked,
            },
            now,
        ));
    }
    Ok(out)
}

/// `GET /fhir/r4/Device/{id}`: a device the Registry knows, by its EPC
/// (24 hex digits); `inactive` once deactivated. Whom it is assigned to is
/// not shown.
async fn device(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Refused> {
    if !matches!(
        caller.role,
        Role::Admin | Role::Doctor | Role::Nurse | Role::Patient
    ) {
        return Err(refused(
            ProblemType::Forbidden,
            "devices are shown to people, not to machines",
        ));
    }
    let not_found = |why: &str| {
        refused(
            ProblemType::NotFound,
            format!("no Device {}: {why}", bounded(&id)),
        )
    };
    let epc =
        Epc::from_hex(&id).map_err(|_| not_found("a device's id is its EPC, 24 hex digits"))?;
    let found = state
        .view
        .contracts()
        .registry()
        .device(FixedBytes(*epc.as_bytes()))
        .call()
        .await
        .doing("asking the Registry for a device")?;
    if !found.registered {
        return Err(not_found("the Registry does not know it"));
    }
    let mut resource = fhir::device(epc.as_bytes(), Some(&epc.to_pure_uri()));
    if !found.active {
        resource["status"] = json!("inactive");
    }
    Ok(fhir_response(&resource))
}

/// `GET /fhir/r4/metadata`: what this API does, as a CapabilityStatement.
async fn metadata(headers: HeaderMap, uri: Uri) -> Response {
    let search = |name: &str, kind: &str, doc: &str| json!({ "name": name, "type": kind, "documentation": doc });
    let paging = [
        search("_count", "number", "page size (default 50, at most 1000)"),
        search("_offset", "number", "matches to skip"),
    ];
    let patient = search(
        "patient",
        "reference",
        "Patient/<patientRef>; an admin names the patient, a patient reads their own",
    );
    let read_only = json!([{ "code": "search-type" }]);
    let resource = |kind: &str, profile: Option<&str>, interactions: Value, params: Vec<Value>| {
        let mut r = json!({
            "type": kind,
            "interaction": interactions,
            "searchParam": params,
        });
        if let Some(p) = profile {
            r["supportedProfile"] = json!([p]);
        }
        r
    };
    let vital_signs: Vec<String> = [
        "heartrate",
        "oxygensat",
        "bodytemp",
        "resprate",
        "bodyweight",
        "bp",
        "vitalsigns",
    ]
    .iter()
    .map(|p| format!("http://hl7.org/fhir/StructureDefinition/{p}"))
    .collect();
    let mut observation = resource(
        "Observation",
        None,
        json!([{ "code": "read" }, { "code": "search-type" }]),
        [
            vec![
                patient.clone(),
                search("code", "token", "LOINC codes, comma-separated (system|code or code)"),
                search("date", "date", "effectiveDateTime, with eq, ge, gt, le or lt"),
                search(
                    "request",
                    "number",
                    "the on-chain access request this read relies on (or the X-Access-Request header)",
                ),
            ],
            paging.to_vec(),
        ]
        .concat(),
    );
    observation["supportedProfile"] = json!(vital_signs);
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": fhir::instant(now_ms()),
        "publisher": "medledger",
        "kind": "instance",
        "software": { "name": "medledger", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "medledger server: a patient's vital signs, reads and consents, each read an on-chain access request",
            "url": base_url(&headers, &uri),
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "Mutual TLS: the client's certificate names the person. Observations need a usable on-chain access request; every read is recorded in the patient's ledger and announced to them.",
            "security": { "description": "Mutual TLS with the hospital CA's certificates; access requests on chain (AccessLog)." },
            "resource": [
                observation,
                resource("AuditEvent", None, read_only.clone(), [vec![patient.clone()], paging.to_vec()].concat()),
                resource("Consent", None, read_only, [vec![patient], paging.to_vec()].concat()),
                resource("Device", None, json!([{ "code": "read" }]), vec![]),
            ],
        }],
    });
    fhir_response(&statement)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_intervals_at_their_precision() {
        let day = 86_400_000;
        let dec4 = days_from_civil(2026, 12, 4).unwrap() as u64 * day;
        assert_eq!(fhir::instant(dec4), "2026-12-04T00:00:00.000Z");
        assert_eq!(
            date_bounds("2026-12-04"),
            Some((Some(dec4), Some(dec4 + day)))
        );
        assert_eq!(date_bounds("ge2026-12-04"), Some((Some(dec4), None)));
        assert_eq!(date_bounds("gt2026-12-04"), Some((Some(dec4 + day), None)));
        assert_eq!(date_bounds("lt2026-12-04"), Some((None, Some(dec4))));
        assert_eq!(date_bounds("le2026-12-04"), Some((None, Some(dec4 + day))));
        let dec = days_from_civil(2026, 12, 1).unwrap() as u64 * day;
        let jan = days_from_civil(2027, 1, 1).unwrap() as u64 * day;
        assert_eq!(date_bounds("2026-12"), Some((Some(dec), Some(jan))));
        let ten = dec4 + 10 * 3_600_000;
        assert_eq!(
            date_bounds("ge2026-12-04T10:00:00Z"),
            Some((Some(ten), None))
        );
        assert_eq!(
            date_bounds("2026-12-04T11:00:00.5+01:00"),
            Some((Some(ten + 500), Some(ten + 600)))
        );
        assert_eq!(
            date_bounds("eq2026-12-04T10:00Z"),
            Some((Some(ten), Some(ten + 60_000)))
        );
        for bad in [
            "ne2026-12-04",
            "2026-13-01",
            "yesterday",
            "2026-12-04T25:00Z",
            "26",
        ] {
            assert_eq!(date_bounds(bad), None, "{bad}");
        }
    }
}
