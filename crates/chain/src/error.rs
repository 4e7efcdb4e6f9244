//! Errors of the chain node.

use alloy_primitives::Address;
use std::path::{Path, PathBuf};

/// Why a transaction was refused. Messages follow geth's wording where
/// geth has one, since alloy, cast and ethers match on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// Not a decodable EIP-2718 transaction.
    #[error("rlp: {0}")]
    Malformed(String),
    /// A transaction type this chain does not run (blobs, EIP-7702).
    #[error("transaction type not supported")]
    UnsupportedType,
    /// The signature does not recover a sender.
    #[error("invalid sender")]
    InvalidSignature,
    /// Signed for another chain, or without replay protection.
    #[error("invalid chain id for signer: have {have:?} want {want}")]
    WrongChainId {
        /// The transaction's chain id.
        have: Option<u64>,
        /// This chain's id.
        want: u64,
    },
    /// The nonce was used already.
    #[error("nonce too low: next nonce {next}, tx nonce {nonce}")]
    NonceTooLow {
        /// The next usable nonce.
        next: u64,
        /// The transaction's nonce.
        nonce: u64,
    },
    /// The nonce leaves too large a gap.
    #[error("nonce too high: next nonce {next}, tx nonce {nonce}")]
    NonceTooHigh {
        /// The next usable nonce.
        next: u64,
        /// The transaction's nonce.
        nonce: u64,
    },
    /// A different transaction with this nonce is already waiting.
    #[error(
        "replacement transaction underpriced: a transaction with this nonce is already waiting"
    )]
    Replacement,
    /// The pool holds as many transactions as it may.
    #[error("txpool is full")]
    PoolFull,
    /// The sender has code (EIP-3607).
    #[error("sender not an eoa: {0} has code")]
    SenderHasCode(Address),
    /// The value exceeds the sender's balance.
    #[error("insufficient funds for gas * price + value: balance {balance}, value {value}")]
    InsufficientFunds {
        /// The sender's balance.
        balance: alloy_primitives::U256,
        /// The value sent.
        value: alloy_primitives::U256,
    },
    /// Contract creation code above the EIP-3860 limit.
    #[error("max initcode size exceeded: {size} bytes, the limit is {max}")]
    InitcodeTooLarge {
        /// The size given.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The node stopped sealing (its store failed); nothing is accepted.
    #[error("the node has stopped sealing blocks: {0}")]
    Stopped(String),
    /// The same transaction is already waiting or mined.
    #[error("already known")]
    AlreadyKnown,
    /// More gas than a block holds.
    #[error("exceeds block gas limit")]
    GasLimitExceeded,
    /// Less gas than the transaction's intrinsic cost.
    #[error("intrinsic gas too low")]
    IntrinsicGasTooLow,
    /// Larger than a transaction may be.
    #[error("oversized data: transaction is {size} bytes, the limit is {max}")]
    TooLarge {
        /// The size given.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The sender may not send transactions on this chain.
    #[error("sender {0} is not permitted to send transactions on this chain")]
    NotPermitted(Address),
}

/// An error of the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store is unreadable or inconsistent.
    #[error("chain store: {what}")]
    Store {
        /// What is wrong.
        what: String,
    },
    /// The stored chain fails verification.
    #[error("stored chain is tampered with at block {block}: {what}")]
    Tampered {
        /// The first bad block.
        block: u64,
        /// Which check failed.
        what: String,
    },
    /// Another process has the store open: a running node.
    #[error(
        "{}: the chain store is in use by another process (a running `medledger chain` or `medledger up`?): stop it first",
        path.display()
    )]
    InUse {
        /// The store file.
        path: PathBuf,
    },
    /// The database engine failed.
    #[error("chain store: {0}")]
    Redb(#[from] redb::Error),
    /// A key or certificate operation failed.
    #[error(transparent)]
    Pki(#[from] medledger_pki::Error),
    /// A transaction was refused.
    #[error(transparent)]
    Tx(#[from] TxError),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
}

impl ChainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ChainError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ChainError {
            fn from(e: $t) -> Self {
                ChainError::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The crate's result type.
pub type Result<T, E = ChainError> = std::result::Result<T, E>;
