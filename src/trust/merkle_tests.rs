use super::*;

/// RFC 6962's definition, written recursively, to check the bottom-up tree against.
fn reference_root(leaves: &[Vec<u8>]) -> Digest {
    match leaves.len() {
        0 => empty_root(),
        1 => leaf_hash(&leaves[0]),
        n => {
            let k = largest_power_of_two_below(n);
            node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
        }
    }
}

/// RFC 6962's PATH(m, D[n]), written recursively.
fn reference_path(index: usize, leaves: &[Vec<u8>]) -> Vec<Digest> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = largest_power_of_two_below(n);
    if index < k {
        let mut path = reference_path(index, &leaves[..k]);
        path.push(reference_root(&leaves[k..]));
        path
    } else {
        let mut path = reference_path(index - k, &leaves[k..]);
        path.push(reference_root(&leaves[..k]));
        path
    }
}

fn largest_power_of_two_below(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

#[test]
fn a_cap_built_group_by_group_is_the_trees_cap_and_its_groups_give_the_trees_paths() {
    for count in 0..=70u64 {
        let hashes: Vec<Digest> = leaves(count as usize)
            .iter()
            .map(|l| leaf_hash(l))
            .collect();
        let tree = MerkleTree::from_leaf_hashes(hashes.clone());
        for max_nodes in [0, 1, 2, 3, 4, 7, 16, 100] {
            let mut builder = CapBuilder::new(count, max_nodes);
            for hash in &hashes {
                builder.push_hash(*hash);
            }
            assert_eq!(builder.len(), count);
            let mut one_more = builder.clone();
            one_more.push_hash(leaf_hash(b"one more"));
            assert_eq!(one_more.finish(), None);
            let cap = builder.finish().unwrap();
            assert_eq!(
                cap,
                tree.cap(max_nodes),
                "{count} leaves, cap of {max_nodes}"
            );
            assert!(cap.fits(count));
            assert_eq!(cap.root(), tree.root());
            let size = 1usize << cap.level;
            for (group, chunk) in (0u64..).zip(hashes.chunks(size)) {
                let proofs = CapGroup::new(&cap, group, chunk.to_vec()).unwrap();
                for (offset, index) in (0u64..).zip(group * size as u64..) {
                    if offset as usize >= chunk.len() {
                        break;
                    }
                    let path = proofs.path(offset).unwrap();
                    assert_eq!(Some(path.clone()), tree.path_to_cap(index, &cap));
                    assert!(verify_to_cap(
                        &hashes[index as usize],
                        index,
                        count,
                        &path,
                        &cap
                    ));
                }
            }
        }
    }
}

#[test]
fn a_group_whose_leaves_do_not_fold_to_its_cap_node_gives_no_paths() {
    let hashes: Vec<Digest> = leaves(40).iter().map(|l| leaf_hash(l)).collect();
    let cap = MerkleTree::from_leaf_hashes(hashes.clone()).cap(5);
    assert_eq!(cap.level, 3);
    assert!(CapGroup::new(&cap, 1, hashes[8..16].to_vec()).is_some());
    // Another group's leaves, one leaf changed, one missing, one too many, past the cap.
    assert!(CapGroup::new(&cap, 1, hashes[0..8].to_vec()).is_none());
    let mut changed = hashes[8..16].to_vec();
    changed[3] = leaf_hash(b"mallory@contoso.com");
    assert!(CapGroup::new(&cap, 1, changed).is_none());
    assert!(CapGroup::new(&cap, 1, hashes[8..15].to_vec()).is_none());
    assert!(CapGroup::new(&cap, 1, hashes[8..17].to_vec()).is_none());
    assert!(CapGroup::new(&cap, 5, hashes[32..40].to_vec()).is_none());
    assert!(CapGroup::new(&cap, 4, Vec::new()).is_none());
}

fn leaves(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("user{i}@contoso.com").into_bytes())
        .collect()
}

#[test]
fn roots_and_paths_match_rfc_6962_for_every_size_up_to_70() {
    for count in 0..=70 {
        let data = leaves(count);
        let tree = MerkleTree::from_leaves(&data);
        assert_eq!(tree.len(), count as u64);
        assert_eq!(tree.root(), reference_root(&data), "count {count}");
        assert_eq!(
            root(&data),
            reference_root(&data),
            "streamed, count {count}"
        );
        for index in 0..count {
            let proof = tree.proof(index as u64).unwrap();
            assert_eq!(
                proof.path,
                reference_path(index, &data),
                "count {count} index {index}"
            );
        }
        assert_eq!(tree.proof(count as u64), None);
    }
}

#[test]
fn known_answer_from_rfc_6962_style_definition() {
    // Two leaves "a", "b": H(1 ‖ H(0 ‖ "a") ‖ H(0 ‖ "b")), computed independently.
    let mut manual = vec![1u8];
    manual.extend(Digest::of(b"\0a").0);
    manual.extend(Digest::of(b"\0b").0);
    assert_eq!(root([b"a", b"b"]), Digest::of(&manual));
    assert_eq!(root(Vec::<Vec<u8>>::new()), Digest::of(b""));
    assert_eq!(root([b"a"]), Digest::of(b"\0a"));
}

#[test]
fn every_proof_of_small_trees_verifies_and_nothing_else_does() {
    for count in 1..=33u64 {
        let data = leaves(count as usize);
        let tree = MerkleTree::from_leaves(&data);
        let root = tree.root();
        for index in 0..count {
            let proof = tree.proof(index).unwrap();
            let leaf = &data[index as usize];
            assert!(proof.verify(leaf, &root), "count {count} index {index}");
            // Another leaf's data, another index, another count, another root: refused.
            let other = b"mallory@contoso.com";
            assert!(!verify(other, index, count, &proof.path, &root));
            if count > 1 {
                let wrong_index = (index + 1) % count;
                assert!(!verify(leaf, wrong_index, count, &proof.path, &root));
            }
            assert!(!verify(leaf, count, count, &proof.path, &root));
            assert!(!verify(leaf, index, count, &proof.path, &Digest::of(b"x")));
            // A shortened or lengthened path: refused.
            if let Some((_, shorter)) = proof.path.split_last() {
                assert!(!verify(leaf, index, count, shorter, &root));
            }
            let mut longer = proof.path.clone();
            longer.push(root);
            assert!(!verify(leaf, index, count, &longer, &root));
        }
    }
}

#[test]
fn a_leaf_cannot_pose_as_an_interior_node() {
    // Domain separation: the two children of the root of a 2-leaf tree, concatenated, are
    // not a leaf of a 1-leaf tree with the same root.
    let tree = MerkleTree::from_leaves([b"a", b"b"]);
    let mut forged = Vec::new();
    forged.extend(leaf_hash(b"a").0);
    forged.extend(leaf_hash(b"b").0);
    assert!(!verify(&forged, 0, 1, &[], &tree.root()));
}

#[test]
fn proofs_survive_the_wire_and_bad_encodings_are_refused() {
    let tree = MerkleTree::from_leaves(leaves(1000));
    let proof = tree.proof(777).unwrap();
    let json = serde_json::to_string(&proof).unwrap();
    let back: MerkleProof = serde_json::from_str(&json).unwrap();
    assert_eq!(back, proof);
    assert!(serde_json::from_str::<MerkleProof>(r#"{"index":0,"count":2,"path":"AAAA"}"#).is_err());
    assert!(serde_json::from_str::<MerkleProof>(r#"{"index":0,"count":2,"path":"*"}"#).is_err());
    let huge = "A".repeat(10_000);
    let text = format!(r#"{{"index":0,"count":2,"path":"{huge}"}}"#);
    assert!(serde_json::from_str::<MerkleProof>(&text).is_err());
}

#[test]
fn every_leaf_of_small_odd_trees_verifies_against_the_cap_and_the_cap_against_the_root() {
    for count in 1..=70u64 {
        let data = leaves(count as usize);
        let tree = MerkleTree::from_leaves(&data);
        for max_nodes in [1, 2, 3, 4, 5, 8, 16, 100] {
            let cap = tree.cap(max_nodes);
            assert!(cap.nodes.len() as u64 <= max_nodes.max(1), "count {count}");
            assert!(cap.fits(count), "count {count} cap {max_nodes}");
            assert_eq!(cap.root(), tree.root(), "count {count} cap {max_nodes}");
            for index in 0..count {
                let leaf = leaf_hash(&data[index as usize]);
                let path = tree.path_to_cap(index, &cap).unwrap();
                assert!(path.len() <= cap.level as usize);
                assert!(
                    verify_to_cap(&leaf, index, count, &path, &cap),
                    "count {count} cap {max_nodes} index {index}"
                );
                // Another leaf, another index, a wrong count, a bent or cut path: refused.
                assert!(!verify_to_cap(
                    &leaf_hash(b"mallory"),
                    index,
                    count,
                    &path,
                    &cap
                ));
                if count > 1 {
                    let other = (index + 1) % count;
                    assert!(!verify_to_cap(&leaf, other, count, &path, &cap));
                }
                assert!(!verify_to_cap(&leaf, count, count, &path, &cap));
                if let Some((_, shorter)) = path.split_last() {
                    assert!(!verify_to_cap(&leaf, index, count, shorter, &cap));
                    let mut bent = path.clone();
                    bent[0].0[0] ^= 1;
                    assert!(!verify_to_cap(&leaf, index, count, &bent, &cap));
                }
                let mut longer = path.clone();
                longer.push(leaf);
                assert!(!verify_to_cap(&leaf, index, count, &longer, &cap));
            }
        }
    }
}

#[test]
fn a_tampered_cap_does_not_fold_to_the_root_or_does_not_fit() {
    let data = leaves(37);
    let tree = MerkleTree::from_leaves(&data);
    let cap = tree.cap(8);
    assert_eq!((cap.level, cap.nodes.len()), (3, 5));
    let mut changed = cap.clone();
    changed.nodes[2].0[31] ^= 1;
    assert_ne!(changed.root(), tree.root());
    let mut shorter = cap.clone();
    shorter.nodes.pop();
    assert!(!shorter.fits(37));
    let mut lower = cap.clone();
    lower.level = 2;
    assert!(!lower.fits(37));
    // The leaf of a genuine path checked against a changed cap: refused.
    let path = tree.path_to_cap(17, &cap).unwrap();
    assert!(verify_to_cap(&leaf_hash(&data[17]), 17, 37, &path, &cap));
    let mut other = cap.clone();
    other.nodes[17 >> 3].0[0] ^= 1;
    assert!(!verify_to_cap(&leaf_hash(&data[17]), 17, 37, &path, &other));
    // On the wire: one base64 string; a cap of more than twice CAP_NODES is refused.
    let json = serde_json::to_string(&cap).unwrap();
    assert_eq!(serde_json::from_str::<MerkleCap>(&json).unwrap(), cap);
    let huge = "A".repeat(400_000);
    let text = format!(r#"{{"level":0,"nodes":"{huge}"}}"#);
    assert!(serde_json::from_str::<MerkleCap>(&text).is_err());
}

#[test]
fn a_million_leaf_tree_needs_8_hashes_per_leaf_under_a_4096_node_cap() {
    let count = 1_000_000u64;
    let tree =
        MerkleTree::from_leaf_hashes((0..count).map(|i| leaf_hash(&i.to_le_bytes())).collect());
    let cap = tree.cap(CAP_NODES);
    assert_eq!(cap.level, 8);
    assert_eq!(cap.nodes.len(), 3907);
    assert_eq!(cap.root(), tree.root());
    for index in [0, 1, 499_999, count - 1] {
        let path = tree.path_to_cap(index, &cap).unwrap();
        // A node last on its level and without a neighbour needs no hash.
        assert!(
            path.len() <= 8 && (index != 0 || path.len() == 8),
            "{index}"
        );
        assert!(verify_to_cap(
            &leaf_hash(&index.to_le_bytes()),
            index,
            count,
            &path,
            &cap
        ));
    }
    assert_eq!(
        MerkleTree::from_leaves(leaves(4096)).cap(CAP_NODES).level,
        0
    );
}

#[test]
fn random_proofs_of_a_big_odd_tree_verify() {
    use rand::{Rng, SeedableRng};
    let count = 100_003u64;
    let data: Vec<Vec<u8>> = (0..count).map(|i| i.to_le_bytes().to_vec()).collect();
    let tree = MerkleTree::from_leaves(&data);
    assert_eq!(tree.root(), root(&data));
    let mut rng = rand::rngs::StdRng::seed_from_u64(10);
    for index in (0..200)
        .map(|_| rng.random_range(0..count))
        .chain([0, count - 1])
    {
        let proof = tree.proof(index).unwrap();
        assert!(proof.path.len() <= 17, "{}", proof.path.len());
        assert!(proof.verify(&data[index as usize], &tree.root()));
        assert!(!proof.verify(&data[((index + 1) % count) as usize], &tree.root()));
    }
}
