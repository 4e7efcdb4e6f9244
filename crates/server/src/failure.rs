//! A failure of the server's own: its database, its chain node, its blob
//! store or its ledger could not do what was asked. A [`Failure`] says what
//! the server was doing and why, for the log and for the operator's tools;
//! an endpoint never sends that text to a client (it answers 503 with a
//! fixed detail, see `answer::unavailable`).

use std::borrow::Cow;

/// What a failure came from: any error, or a sentence when there is none.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What the server was doing when something of its own failed, and why.
#[derive(Debug)]
pub struct Failure {
    doing: Cow<'static, str>,
    cause: Cause,
}

impl Failure {
    /// Failed while `doing`, because of `cause`.
    pub fn new(doing: impl Into<Cow<'static, str>>, cause: impl Into<Cause>) -> Self {
        Failure {
            doing: doing.into(),
            cause: cause.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.doing, self.cause)
    }
}

/// The cause is in the text already: a report that walks the sources
/// (anyhow's `{:#}`) would say it twice.
impl std::error::Error for Failure {}

/// `result.doing("reading batches to anchor")?`: names what failed.
pub(crate) trait Doing<T> {
    /// A failure while `doing`, caused by this result's error.
    fn doing(self, doing: impl Into<Cow<'static, str>>) -> Result<T, Failure>;
}

impl<T, E: Into<Cause>> Doing<T> for Result<T, E> {
    fn doing(self, doing: impl Into<Cow<'static, str>>) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(doing, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_what_was_being_done_and_why_once() {
        let io = std::io::Error::other("disk I/O error");
        let f = Err::<(), _>(io)
            .doing("recording anchors")
            .expect_err("a failure");
        assert_eq!(f.to_string(), "recording anchors: disk I/O error");
        assert_eq!(
            format!("{:#}", anyhow::Error::from(f)),
            "recording anchors: disk I/O error"
        );
    }
}
