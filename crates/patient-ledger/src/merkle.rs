//! The RFC 6962 Merkle tree (RFC 9162 §2.1): hashing, inclusion and
//! consistency proofs, and their verification.
//!
//! Leaves are hashed as `SHA-256(0x00 || entry)` and interior nodes as
//! `SHA-256(0x01 || left || right)`; a tree of `n` leaves splits at the
//! largest power of two below `n`. The empty tree's root is `SHA-256("")`.
//!
//! [`Tree`] keeps every complete, aligned subtree's hash (level `k` holds
//! the roots of leaves `[i·2^k, (i+1)·2^k)`), so the root of any prefix and
//! any proof take O(log² n) hashing, whatever the size.

use ring::digest::{Context, SHA256, digest};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange {
        /// The index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The sizes are not `0 < old <= new`.
    #[error("cannot prove consistency from size {old} to size {new}")]
    BadSizes {
        /// The earlier size.
        old: u64,
        /// The later size.
        new: u64,
    },
    /// The proof has the wrong number of hashes for these sizes.
    #[error("the proof has {got} hashes, not the number these sizes call for")]
    WrongLength {
        /// Hashes in the proof.
        got: usize,
    },
    /// The proof leads to another root.
    #[error("the proof leads to root {computed}, not {expected}")]
    RootMismatch {
        /// Hex of the root the proof computes.
        computed: String,
        /// Hex of the root it should reach.
        expected: String,
    },
    /// A consistency proof's earlier root does not match.
    #[error("the proof leads to old root {computed}, not {expected}")]
    OldRootMismatch {
        /// Hex of the old root the proof computes.
        computed: String,
        /// Hex of the old root it should reach.
        expected: String,
    },
}

/// `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0]);
    ctx.update(entry);
    finish(ctx)
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[1]);
    ctx.update(left);
    ctx.update(right);
    finish(ctx)
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    digest(&SHA256, b"")
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

fn finish(ctx: Context) -> Hash {
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// A Merkle tree over leaf hashes, with the hashes of all complete aligned
/// subtrees kept.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// `levels[k][i]` = root of leaves `[i·2^k, (i+1)·2^k)`.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// A tree of these leaf hashes.
    pub fn from_leaf_hashes(leaves: impl IntoIterator<Item = Hash>) -> Tree {
        let mut tree = Tree::new();
        for leaf in leaves {
            tree.push(leaf);
        }
        tree
    }

    /// How many leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf hash (see [`leaf_hash`]).
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(hash);
            // A right child completes its parent.
            if row.len() % 2 == 1 {
                return;
            }
            hash = node_hash(&row[row.len() - 2], &row[row.len() - 1]);
            level += 1;
        }
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// The root of the first `size` leaves (`size <= self.size()`).
    pub fn root(&self, size: u64) -> Option<Hash> {
        if size > self.size() {
            return None;
        }
        Some(if size == 0 {
            empty_root()
        } else {
            self.subtree(0, size)
        })
    }

    /// The root of leaves `[start, start + len)`, `len >= 1`, all present.
    fn subtree(&self, start: u64, len: u64) -> Hash {
        if len.is_power_of_two() && start.is_multiple_of(len) {
            let level = len.trailing_zeros() as usize;
            return self.levels[level][(start >> level) as usize];
        }
        let k = split(len);
        node_hash(&self.subtree(start, k), &self.subtree(start + k, len - k))
    }

    /// The audit path of leaf `index` in the tree of the first `size`
    /// leaves (RFC 9162 §2.1.3.1).
    pub fn inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        if index >= size || size > self.size() {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    /// PATH(m, D[start..start+n]), siblings from the leaf up.
    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) {
        if n == 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, k, out);
            out.push(self.subtree(start + k, n - k));
        } else {
            self.path(m - k, start + k, n - k, out);
            out.push(self.subtree(start, k));
        }
    }

    /// The proof that the tree of `new` leaves extends the tree of `old`
    /// leaves (RFC 9162 §2.1.4.1); `0 < old <= new <= self.size()`.
    pub fn consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        if old == 0 || old > new || new > self.size() {
            return Err(ProofError::BadSizes { old, new });
        }
        let mut proof = Vec::new();
        self.subproof(old, 0, new, true, &mut proof);
        Ok(proof)
    }

    /// SUBPROOF(m, D[start..start+n], b).
    fn subproof(&self, m: u64, start: u64, n: u64, complete: bool, out: &mut Vec<Hash>) {
        if m == n {
            if !complete {
                out.push(self.subtree(start, n));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, complete, out);
            out.push(self.subtree(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.subtree(start, k));
        }
    }
}

/// Checks that `leaf` (a leaf hash) is at `index` in the tree of `size`
/// leaves whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::WrongLength { got: proof.len() });
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength { got: proof.len() });
    }
    if r != *root {
        return Err(ProofError::RootMismatch {
            computed: hex::encode(r),
            expected: hex::encode(root),
        });
    }
    Ok(())
}

/// Checks that the tree of `new` leaves with root `new_root` extends the
/// tree of `old` leaves with root `old_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::BadSizes { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength { got: proof.len() });
        }
        if old_root != new_root {
            return Err(ProofError::RootMismatch {
                computed: hex::encode(old_root),
                expected: hex::encode(new_root),
            });
        }
        return Ok(());
    }
    // An old size that is a power of two is its own first hash.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let wrong_length = || ProofError::WrongLength { got: proof.len() };
    let (first, rest) = path.split_first().ok_or_else(wrong_length)?;
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return Err(wrong_length());
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(wrong_length());
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch {
            computed: hex::encode(fr),
            expected: hex::encode(old_root),
        });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch {
            computed: hex::encode(sr),
            expected: hex::encode(new_root),
        });
    }
    Ok(())
}
