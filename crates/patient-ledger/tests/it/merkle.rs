//! RFC 6962 / Certificate Transparency test vectors, and properties over
//! every tree shape up to 1,000 leaves.

use medledger_patient_ledger::merkle::{Hash, ProofError, Tree, empty_root, leaf_hash, node_hash};
use medledger_patient_ledger::{verify_consistency, verify_inclusion};

fn h(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

/// The reference leaves (transparency-dev/merkle `testonly`, CT's C++ tests).
fn reference_tree() -> Tree {
    let leaves = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    Tree::from_leaf_hashes(leaves.iter().map(|l| leaf_hash(&hex::decode(l).unwrap())))
}

const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

#[test]
fn roots_match_the_reference() {
    let tree = reference_tree();
    assert_eq!(empty_root(), h(ROOTS[0]));
    for (size, root) in ROOTS.iter().enumerate() {
        assert_eq!(tree.root(size as u64).unwrap(), h(root), "size {size}");
    }
    assert_eq!(tree.root(9), None);
}

#[test]
fn proofs_match_the_reference() {
    let tree = reference_tree();
    let inclusion: [(u64, u64, &[&str]); 2] = [
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    for (index, size, expected) in inclusion {
        let expected: Vec<Hash> = expected.iter().map(|s| h(s)).collect();
        assert_eq!(tree.inclusion(index, size).unwrap(), expected);
        let leaf = tree.leaf(index).unwrap();
        verify_inclusion(&leaf, index, size, &expected, &h(ROOTS[size as usize])).unwrap();
    }
    let consistency: [(u64, u64, &[&str]); 3] = [
        (
            2,
            8,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (old, new, expected) in consistency {
        let expected: Vec<Hash> = expected.iter().map(|s| h(s)).collect();
        assert_eq!(
            tree.consistency(old, new).unwrap(),
            expected,
            "{old} -> {new}"
        );
        let (r1, r2) = (h(ROOTS[old as usize]), h(ROOTS[new as usize]));
        verify_consistency(old, new, &r1, &r2, &expected).unwrap();
    }
}

/// MTH by the RFC's recursive definition, straight over the leaves.
fn reference_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
        }
    }
}

fn leaves(n: u64, salt: u8) -> Vec<Hash> {
    (0..n)
        .map(|i| leaf_hash(&[&i.to_be_bytes()[..], &[salt]].concat()))
        .collect()
}

#[test]
fn every_leaf_of_every_tree_up_to_1000_leaves_is_proven() {
    let all = leaves(1000, 0);
    let tree = Tree::from_leaf_hashes(all.iter().copied());
    for size in 1..=1000u64 {
        let root = tree.root(size).unwrap();
        if size <= 64 || size % 97 == 0 || size == 1000 {
            assert_eq!(root, reference_root(&all[..size as usize]), "size {size}");
        }
        for index in 0..size {
            let proof = tree.inclusion(index, size).unwrap();
            verify_inclusion(&all[index as usize], index, size, &proof, &root)
                .unwrap_or_else(|e| panic!("leaf {index} of {size}: {e}"));
        }
    }
}

#[test]
fn inclusion_refuses_what_is_not_proven() {
    let all = leaves(37, 0);
    let tree = Tree::from_leaf_hashes(all.iter().copied());
    for size in 2..=37u64 {
        let root = tree.root(size).unwrap();
        for index in 0..size {
            let proof = tree.inclusion(index, size).unwrap();
            let leaf = all[index as usize];
            // Another leaf, another index, a changed or shortened or
            // lengthened proof: each fails. (The size is not bound by the
            // proof but by the signed checkpoint that states it.)
            let other = all[((index + 1) % size) as usize];
            assert!(verify_inclusion(&other, index, size, &proof, &root).is_err());
            assert!(verify_inclusion(&leaf, (index + 1) % size, size, &proof, &root).is_err());
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i][0] ^= 1;
                assert!(matches!(
                    verify_inclusion(&leaf, index, size, &bad, &root),
                    Err(ProofError::RootMismatch { .. })
                ));
            }
            let mut longer = proof.clone();
            longer.push(root);
            assert!(matches!(
                verify_inclusion(&leaf, index, size, &longer, &root),
                Err(ProofError::WrongLength { .. })
            ));
            if !proof.is_empty() {
                assert!(matches!(
                    verify_inclusion(&leaf, index, size, &proof[1..], &root),
                    Err(ProofError::WrongLength { .. } | ProofError::RootMismatch { .. })
                ));
            }
        }
        assert_eq!(
            verify_inclusion(&all[0], size, size, &[], &root),
            Err(ProofError::IndexOutOfRange { index: size, size })
        );
    }
}

#[test]
fn consistency_holds_for_every_pair_up_to_200_and_fails_for_a_fork() {
    let all = leaves(200, 0);
    let tree = Tree::from_leaf_hashes(all.iter().copied());
    let roots: Vec<Hash> = (0..=200).map(|n| tree.root(n).unwrap()).collect();
    for new in 1..=200u64 {
        for old in 1..new {
            let proof = tree.consistency(old, new).unwrap();
            verify_consistency(old, new, &roots[old as usize], &roots[new as usize], &proof)
                .unwrap_or_else(|e| panic!("{old} -> {new}: {e}"));
        }
    }
    // A fork: the same log with one early entry rewritten. Its later trees
    // cannot be proven to extend the honest earlier ones.
    let mut forked_leaves = all.clone();
    forked_leaves[3] = leaf_hash(b"rewritten");
    let forked = Tree::from_leaf_hashes(forked_leaves);
    for new in 5..=200u64 {
        for old in [4u64, 5, new / 2, new - 1]
            .into_iter()
            .filter(|o| *o >= 4 && *o < new)
        {
            let proof = forked.consistency(old, new).unwrap();
            let forked_new = forked.root(new).unwrap();
            assert!(
                verify_consistency(old, new, &roots[old as usize], &forked_new, &proof).is_err(),
                "fork not detected {old} -> {new}"
            );
            // Nor does the honest proof lead to the forked root.
            let honest = tree.consistency(old, new).unwrap();
            assert!(
                verify_consistency(old, new, &roots[old as usize], &forked_new, &honest).is_err()
            );
        }
    }
    // Malformed sizes.
    assert_eq!(
        verify_consistency(0, 5, &roots[0], &roots[5], &[]),
        Err(ProofError::BadSizes { old: 0, new: 5 })
    );
    assert_eq!(
        verify_consistency(6, 5, &roots[6], &roots[5], &[]),
        Err(ProofError::BadSizes { old: 6, new: 5 })
    );
    verify_consistency(5, 5, &roots[5], &roots[5], &[]).unwrap();
    assert!(verify_consistency(5, 5, &roots[5], &roots[6], &[]).is_err());
    assert!(tree.consistency(0, 3).is_err() && tree.consistency(4, 201).is_err());
}
