//! The crate's error type.

use std::path::{Path, PathBuf};

/// What went wrong in a PKI operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file. The cause is in the message, not
    /// chained as a source as well: a report of the whole chain would say
    /// it twice.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// A file whose contents are not what they should be.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A request that does not fit the role or the CA's state.
    #[error("{0}")]
    Request(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A certificate without a valid medledger identity.
    #[error(transparent)]
    Identity(#[from] crate::IdentityError),
    /// An EPC that is not a valid SGTIN-96.
    #[error(transparent)]
    Epc(#[from] crate::EpcError),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

impl Error {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            error,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
