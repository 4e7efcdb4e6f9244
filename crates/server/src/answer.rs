//! What every endpoint answers with: JSON and FHIR answers, refusals as
//! problem+json ([`Refused`]), and the query parameters they read.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use medledger_protocol::{Problem, ProblemType};

pub(crate) use medledger_pki::https::{bounded, problem_response as problem};

/// A JSON answer.
pub(crate) fn json_response(value: &impl serde::Serialize) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

/// A FHIR JSON answer.
pub(crate) fn fhir_response(resource: &serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        resource.to_string(),
    )
        .into_response()
}

/// Why a request is refused: a problem type, the detail people read and,
/// for a refusal that passes by itself, when to try again. Every handler
/// returns it as its error: `?` on a failure of the server's own makes it
/// [`unavailable`].
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) kind: ProblemType,
    pub(crate) detail: String,
    retry_after: Option<u64>,
}

impl Refused {
    /// Asks the client to come back in `seconds` (`Retry-After`).
    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let problem = Problem::new(self.kind, self.detail);
        match self.retry_after {
            Some(seconds) => problem.retry_after(seconds),
            None => problem,
        }
        .into_response()
    }
}

/// `?` on a failure of the server's own (a database, chain or blob store
/// error, a [`crate::Failure`]) answers it as [`unavailable`]: logged, and
/// a 503 with a fixed detail.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for Refused {
    fn from(e: E) -> Self {
        unavailable(e)
    }
}

/// What the server says when it cannot answer for a reason of its own
/// (its database, its chain node, its blob store): a 503 with a fixed
/// detail. The reason itself is logged, never sent: it names internals.
pub(crate) const UNAVAILABLE: &str = "the server could not answer now; try again";

/// A failure of the server's own (`e`), logged, answered 503
/// `unavailable` with [`UNAVAILABLE`] as its detail.
pub(crate) fn unavailable(e: impl std::fmt::Display) -> Refused {
    tracing::warn!(error = %e, "answered 503: the server could not answer");
    refused(ProblemType::Unavailable, UNAVAILABLE)
}

/// A refusal: `kind`, with `detail` for a person.
pub(crate) fn refused(kind: ProblemType, detail: impl Into<String>) -> Refused {
    Refused {
        kind,
        detail: detail.into(),
        retry_after: None,
    }
}

/// The value of `name` in the query, if any.
pub(crate) fn query_param<'a>(uri: &'a axum::http::Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// The whole number `name` in the query: `None` if absent, a 400 naming
/// the parameter if it is not one.
pub(crate) fn number_param(uri: &axum::http::Uri, name: &str) -> Result<Option<u64>, Refused> {
    query_param(uri, name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                refused(
                    ProblemType::Malformed,
                    format!("?{name}= takes a whole number from 0, not {:?}", bounded(v)),
                )
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_of_the_servers_own_is_answered_without_its_text() {
        let r = unavailable("sqlite: disk I/O error at /var/lib/medledger/server.db");
        assert_eq!(r.kind, ProblemType::Unavailable);
        assert_eq!(r.detail, UNAVAILABLE);
        assert_eq!(r.into_response().status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
