//! RFC 9457 problem details with medledger's stable problem types.
//!
//! Every rejection a peer sees is `application/problem+json` whose `type` is
//! `urn:medledger:problem:<name>`; the names never change meaning, so devices
//! and dashboards can act on them.

use serde::Serialize;

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

macro_rules! problem_types {
    ($($variant:ident => ($name:literal, $status:literal, $title:literal),)*) => {
        /// A stable cause of rejection.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ProblemType {
            $(
                #[doc = $title]
                $variant,
            )*
        }

        impl ProblemType {
            /// Every problem type.
            pub const ALL: &[ProblemType] = &[$(ProblemType::$variant),*];

            /// The short stable name, e.g. `bad-signature`.
            pub fn name(self) -> &'static str {
                match self { $(ProblemType::$variant => $name),* }
            }

            /// The HTTP status that carries it.
            pub fn status(self) -> u16 {
                match self { $(ProblemType::$variant => $status),* }
            }

            /// A one-line human title.
            pub fn title(self) -> &'static str {
                match self { $(ProblemType::$variant => $title),* }
            }
        }
    };
}

problem_types! {
    UntrustedCertificate => ("untrusted-certificate", 401, "The client certificate does not chain to the medledger CA or is not valid now"),
    Revoked => ("revoked", 401, "The client certificate is revoked"),
    WrongRole => ("wrong-role", 403, "The certificate's role may not use this endpoint"),
    BadSignature => ("bad-signature", 400, "The reading's signature does not verify with the device certificate"),
    Replay => ("replay", 409, "The reading's sequence number is not above the device's last accepted one"),
    StaleTimestamp => ("stale-timestamp", 400, "The timestamp of the reading or signed request is outside the accepted window"),
    RuleViolation => ("rule-violation", 422, "A rule contract denied the reading"),
    UnknownDevice => ("unknown-device", 403, "The device is not registered, or the reading names another device"),
    NotAdmitted => ("not-admitted", 409, "The device is not assigned to an admitted patient"),
    TooLarge => ("too-large", 413, "The request body is larger than allowed"),
    RateLimited => ("rate-limited", 429, "Too many requests from this device or address"),
    TlsRequired => ("tls-required", 400, "The port speaks HTTPS with a client certificate only"),
    Malformed => ("malformed", 400, "The request is not a well-formed medledger message"),
    Forbidden => ("forbidden", 403, "The request is not permitted"),
    NotFound => ("not-found", 404, "Nothing is stored under this name"),
    Unavailable => ("unavailable", 503, "The service cannot take the request now"),
    StorageUnavailable => ("storage-unavailable", 503, "The service cannot store anything now: its storage is full or failing"),
    SignInRequired => ("sign-in-required", 401, "Sign in first: with a client certificate or with your chain key"),
    ContractRefused => ("contract-refused", 422, "The contract would refuse this transaction"),
    BadRequestSignature => ("bad-request-signature", 403, "The request is not signed by the signed-in account's chain key"),
    ReplayedRequest => ("replayed-request", 409, "This signed request was already taken: sign a new one"),
    MethodNotAllowed => ("method-not-allowed", 405, "This resource does not answer this method"),
}

impl ProblemType {
    /// The `type` URI: `urn:medledger:problem:<name>`.
    pub fn uri(self) -> String {
        format!("urn:medledger:problem:{}", self.name())
    }

    /// Looks a type up by its short name or its URI.
    pub fn parse(s: &str) -> Option<ProblemType> {
        let name = s.strip_prefix("urn:medledger:problem:").unwrap_or(s);
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }
}

/// On the wire (JSON, CBOR text) a problem type is its short name.
impl Serialize for ProblemType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for ProblemType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ProblemType::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown problem type {name:?}")))
    }
}

/// An RFC 9457 problem details document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// `urn:medledger:problem:<name>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// The type's title.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What was wrong with this request, for a person.
    pub detail: String,
    /// Extension members (for example the index of the rejected reading in
    /// a batch, or a rule's reason code).
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// Seconds after which the client may try again (`Retry-After`), for
    /// a refusal that passes by itself.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of `kind` with a human `detail`.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: kind.uri(),
            title: kind.title(),
            status: kind.status(),
            detail: detail.into(),
            extensions: serde_json::Map::new(),
            retry_after: None,
        }
    }

    /// Asks the client to come back in `seconds` (`Retry-After`).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    /// The JSON body.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a problem always serializes")
    }
}

/// Every HTTP service answers a problem the same way: its status, the
/// problem+json media type, `Retry-After` when set, and the document.
#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Problem {
    fn into_response(self) -> axum_core::response::Response {
        use http::{HeaderValue, StatusCode, header};
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            self.to_json(),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn problem_json_has_the_rfc9457_members_and_stable_uris() {
        let p = Problem::new(
            ProblemType::RuleViolation,
            "heart rate 400/min out of range",
        )
        .with("reason", "value-out-of-range");
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(v["type"], "urn:medledger:problem:rule-violation");
        assert_eq!(v["status"], 422);
        assert_eq!(v["reason"], "value-out-of-range");
        for t in ProblemType::ALL {
            assert_eq!(ProblemType::parse(&t.uri()), Some(*t));
        }
    }

    #[test]
    fn a_problem_answers_with_its_status_media_type_and_retry_after() {
        use axum_core::response::IntoResponse;
        let r = Problem::new(ProblemType::StorageUnavailable, "disk full")
            .retry_after(5)
            .into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[http::header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "5");
        let r = Problem::new(ProblemType::Replay, "seq 3 <= 7").into_response();
        assert_eq!(r.status(), 409);
        assert!(r.headers().get(http::header::RETRY_AFTER).is_none());
    }
}
