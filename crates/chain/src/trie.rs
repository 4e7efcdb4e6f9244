//! An account's storage trie, kept between blocks and updated in place:
//! a block that writes k slots hashes only the nodes on those k paths, not
//! every slot of the contract again. Same root as Ethereum's storage trie
//! (keys `keccak256(slot)`, values `rlp(value)`, zero values absent).

use alloy_primitives::{B256, U256, keccak256};
use alloy_trie::nodes::{BranchNodeRef, ExtensionNodeRef, LeafNodeRef, RlpNode};
use alloy_trie::{EMPTY_ROOT_HASH, Nibbles, TrieMask};

/// A storage trie.
#[derive(Debug, Clone, Default)]
pub(crate) struct StorageTrie {
    root: Node,
}

#[derive(Debug, Clone, Default)]
enum Node {
    #[default]
    Empty,
    Leaf {
        key: Nibbles,
        value: Vec<u8>,
        hash: Option<RlpNode>,
    },
    Extension {
        key: Nibbles,
        child: Box<Node>,
        hash: Option<RlpNode>,
    },
    Branch {
        children: Box<[Node; 16]>,
        hash: Option<RlpNode>,
    },
}

fn leaf(key: Nibbles, value: Vec<u8>) -> Node {
    Node::Leaf {
        key,
        value,
        hash: None,
    }
}

/// `child` under `key`, or `child` itself for an empty key.
fn extension(key: Nibbles, child: Node) -> Node {
    if key.is_empty() {
        return child;
    }
    Node::Extension {
        key,
        child: Box::new(child),
        hash: None,
    }
}

fn nibble(n: u8) -> Nibbles {
    Nibbles::from_nibbles([n])
}

impl Node {
    /// Sets `path` (the rest of a key) to `value`.
    fn insert(self, path: Nibbles, value: Vec<u8>) -> Node {
        match self {
            Node::Empty => leaf(path, value),
            Node::Leaf {
                key, value: old, ..
            } => {
                if key == path {
                    return leaf(key, value);
                }
                let c = key.common_prefix_length(&path);
                let mut children: Box<[Node; 16]> = Box::new(std::array::from_fn(|_| Node::Empty));
                children[usize::from(key.get_unchecked(c))] = leaf(key.slice(c + 1..), old);
                children[usize::from(path.get_unchecked(c))] = leaf(path.slice(c + 1..), value);
                extension(
                    path.slice(..c),
                    Node::Branch {
                        children,
                        hash: None,
                    },
                )
            }
            Node::Extension { key, child, .. } => {
                let c = key.common_prefix_length(&path);
                if c == key.len() {
                    return extension(key, child.insert(path.slice(c..), value));
                }
                let mut children: Box<[Node; 16]> = Box::new(std::array::from_fn(|_| Node::Empty));
                children[usize::from(key.get_unchecked(c))] = extension(key.slice(c + 1..), *child);
                children[usize::from(path.get_unchecked(c))] = leaf(path.slice(c + 1..), value);
                extension(
                    path.slice(..c),
                    Node::Branch {
                        children,
                        hash: None,
                    },
                )
            }
            Node::Branch { mut children, .. } => {
                let i = usize::from(path.get_unchecked(0));
                let child = std::mem::take(&mut children[i]);
                children[i] = child.insert(path.slice(1..), value);
                Node::Branch {
                    children,
                    hash: None,
                }
            }
        }
    }

    /// Removes `path`; says whether it was there.
    fn remove(self, path: &Nibbles) -> (Node, bool) {
        match self {
            Node::Empty => (Node::Empty, false),
            Node::Leaf { ref key, .. } if key == path => (Node::Empty, true),
            node @ Node::Leaf { .. } => (node, false),
            Node::Extension { key, child, hash } => {
                if !path.starts_with(&key) {
                    return (Node::Extension { key, child, hash }, false);
                }
                let (child, removed) = child.remove(&path.slice(key.len()..));
                if !removed {
                    return (
                        Node::Extension {
                            key,
                            child: Box::new(child),
                            hash,
                        },
                        false,
                    );
                }
                (prefixed(key, child), true)
            }
            Node::Branch { mut children, hash } => {
                let i = usize::from(path.get_unchecked(0));
                let (child, removed) = std::mem::take(&mut children[i]).remove(&path.slice(1..));
                children[i] = child;
                if !removed {
                    return (Node::Branch { children, hash }, false);
                }
                let mut left = children
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| !matches!(c, Node::Empty));
                let only = match (left.next(), left.next()) {
                    (Some((j, _)), None) => Some(j),
                    _ => None,
                };
                let node = match only {
                    // One child left: the branch folds into it.
                    Some(j) => {
                        let child = std::mem::take(&mut children[j]);
                        prefixed(nibble(j as u8), child)
                    }
                    None => Node::Branch {
                        children,
                        hash: None,
                    },
                };
                (node, true)
            }
        }
    }

    /// The node's reference in its parent (its RLP if shorter than 32
    /// bytes, else its hash), computed only where something changed.
    fn reference(&mut self, buf: &mut Vec<u8>) -> RlpNode {
        match self {
            Node::Empty => RlpNode::from_rlp(&[alloy_rlp::EMPTY_STRING_CODE]),
            Node::Leaf { key, value, hash } => {
                if let Some(h) = hash {
                    return h.clone();
                }
                buf.clear();
                let r = LeafNodeRef::new(key, value).rlp(buf);
                *hash = Some(r.clone());
                r
            }
            Node::Extension { key, child, hash } => {
                if let Some(h) = hash {
                    return h.clone();
                }
                let child = child.reference(buf);
                buf.clear();
                let r = ExtensionNodeRef::new(key, &child).rlp(buf);
                *hash = Some(r.clone());
                r
            }
            Node::Branch { children, hash } => {
                if let Some(h) = hash {
                    return h.clone();
                }
                let mut stack = Vec::with_capacity(16);
                let mut mask = TrieMask::default();
                for (i, child) in children.iter_mut().enumerate() {
                    if !matches!(child, Node::Empty) {
                        mask.set_bit(i as u8);
                        stack.push(child.reference(buf));
                    }
                }
                buf.clear();
                let r = BranchNodeRef::new(&stack, mask).rlp(buf);
                *hash = Some(r.clone());
                r
            }
        }
    }
}

/// `node` moved under `key` (joining keys where it can).
fn prefixed(key: Nibbles, node: Node) -> Node {
    match node {
        Node::Empty => Node::Empty,
        Node::Leaf {
            key: rest, value, ..
        } => leaf(key.join(&rest), value),
        Node::Extension {
            key: rest, child, ..
        } => extension(key.join(&rest), *child),
        branch @ Node::Branch { .. } => extension(key, branch),
    }
}

impl StorageTrie {
    /// A trie of `slots` (zero values are skipped).
    pub(crate) fn build<'a>(slots: impl IntoIterator<Item = (&'a U256, &'a U256)>) -> StorageTrie {
        let mut trie = StorageTrie::default();
        for (slot, value) in slots {
            trie.set(slot, value);
        }
        trie
    }

    /// Writes a slot; zero removes it.
    pub(crate) fn set(&mut self, slot: &U256, value: &U256) {
        self.set_hashed(keccak256(B256::from(*slot)), value);
    }

    fn set_hashed(&mut self, key: B256, value: &U256) {
        let path = Nibbles::unpack(key);
        let root = std::mem::take(&mut self.root);
        self.root = if value.is_zero() {
            root.remove(&path).0
        } else {
            root.insert(path, alloy_rlp::encode_fixed_size(value).to_vec())
        };
    }

    /// The root hash.
    pub(crate) fn root(&mut self) -> B256 {
        if matches!(self.root, Node::Empty) {
            return EMPTY_ROOT_HASH;
        }
        let mut buf = Vec::with_capacity(600);
        let r = self.root.reference(&mut buf);
        r.as_hash().unwrap_or_else(|| keccak256(&r[..]))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloy_trie::root::{storage_root, storage_root_unhashed};
    use std::collections::BTreeMap;

    /// A deterministic stream of numbers.
    fn numbers(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn every_update_gives_the_root_a_full_rebuild_gives() {
        let mut next = numbers(0x2545_F491_4F6C_DD1D);
        let mut trie = StorageTrie::default();
        let mut slots: BTreeMap<U256, U256> = BTreeMap::new();
        assert_eq!(trie.root(), EMPTY_ROOT_HASH);
        for round in 0..60 {
            for _ in 0..(1 + next() % 40) {
                let slot = U256::from(next() % 300);
                // A third of the writes delete.
                let value = if next().is_multiple_of(3) {
                    U256::ZERO
                } else {
                    U256::from(next() % 1_000_000)
                };
                trie.set(&slot, &value);
                if value.is_zero() {
                    slots.remove(&slot);
                } else {
                    slots.insert(slot, value);
                }
            }
            let expected = storage_root_unhashed(slots.iter().map(|(k, v)| (B256::from(*k), *v)));
            assert_eq!(
                trie.root(),
                expected,
                "round {round}, {} slots",
                slots.len()
            );
            let mut rebuilt = StorageTrie::build(&slots);
            assert_eq!(rebuilt.root(), expected);
        }
        for slot in slots.keys().copied().collect::<Vec<_>>() {
            trie.set(&slot, &U256::ZERO);
        }
        assert_eq!(trie.root(), EMPTY_ROOT_HASH);
    }

    #[test]
    fn keys_sharing_long_prefixes_make_small_inline_nodes_and_still_agree() {
        // Keys that differ only in their last nibbles: leaves with short
        // keys and small values, encoded inline in their parent.
        let mut trie = StorageTrie::default();
        let mut leaves: BTreeMap<B256, U256> = BTreeMap::new();
        for i in 0..40u8 {
            let mut key = B256::repeat_byte(0xab);
            key[31] = i.wrapping_mul(7);
            key[30] = i % 3;
            let value = U256::from(u64::from(i) + 1);
            trie.set_hashed(key, &value);
            leaves.insert(key, value);
            assert_eq!(trie.root(), storage_root(leaves.clone()), "after {i}");
        }
        for (i, key) in leaves
            .keys()
            .copied()
            .collect::<Vec<_>>()
            .into_iter()
            .enumerate()
        {
            if i % 2 == 0 {
                trie.set_hashed(key, &U256::ZERO);
                leaves.remove(&key);
                assert_eq!(trie.root(), storage_root(leaves.clone()));
            }
        }
    }
}
