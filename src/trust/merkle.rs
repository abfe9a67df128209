//! The Merkle tree that lets one signature cover a whole batch: the producer signs a manifest
//! holding the root, and each request carries its inclusion proof.
//!
//! The tree is RFC 6962's (Certificate Transparency, section 2.1): SHA-256 with domain
//! separation, `leaf = H(0x00 ‖ data)` and `node = H(0x01 ‖ left ‖ right)`, for any number of
//! leaves: the left subtree holds the largest power of two strictly below the count. Built
//! bottom-up, that is "pair neighbours; a last node without a neighbour moves up unchanged".
//! The empty tree's root is `H("")`. Proofs list sibling hashes from the leaf upwards and are
//! checked with RFC 9162's algorithm (section 2.1.3.2).
//!
//! A [`MerkleCap`] is one whole level of the tree (at most [`CAP_NODES`] nodes), published once
//! per batch beside the signed manifest: it folds up to the signed root, so once it is checked,
//! a request only needs the short path from its leaf up to the cap ([`verify_to_cap`]): 8
//! hashes for a million leaves instead of 20, none at all for a batch of up to 4096.
//!
//! Memory: [`MerkleTree`] keeps every level, about two hashes per leaf (64 MB for a million
//! leaves), so every proof is a walk of ~20 lookups. [`RootBuilder`] computes only the root of a
//! stream of leaves in O(log n) memory, for a verifier that has the whole list.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use super::digest::Digest;

/// Hash of one leaf: `H(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Digest {
    Digest(
        Sha256::new()
            .chain_update([0u8])
            .chain_update(data)
            .finalize()
            .into(),
    )
}

/// Hash of an interior node: `H(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    Digest(
        Sha256::new()
            .chain_update([1u8])
            .chain_update(left.0)
            .chain_update(right.0)
            .finalize()
            .into(),
    )
}

/// The root of the empty tree: `H("")`.
pub fn empty_root() -> Digest {
    Digest::of(b"")
}

/// Root of the tree over `leaves` (each leaf's data, in order), in O(log n) memory.
pub fn root<I, B>(leaves: I) -> Digest
where
    I: IntoIterator<Item = B>,
    B: AsRef<[u8]>,
{
    let mut builder = RootBuilder::default();
    for leaf in leaves {
        builder.push(leaf.as_ref());
    }
    builder.root()
}

/// The level above `below`: each pair hashed into one node; RFC 6962: a last node without
/// a neighbour moves up unchanged.
fn level_above(below: &[Digest]) -> Vec<Digest> {
    below
        .chunks(2)
        .map(|pair| match pair {
            [left, right] => node_hash(left, right),
            [alone] => *alone,
            _ => unreachable!("chunks(2) yields one or two items"),
        })
        .collect()
}

/// A whole tree, every level kept, for building the proofs of all leaves.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    /// `levels[0]` are the leaf hashes; each next level is half as long (rounded up);
    /// the last level holds the root alone. Empty for an empty tree.
    levels: Vec<Vec<Digest>>,
}

impl MerkleTree {
    /// Build the tree over `leaves` (each leaf's data, in order).
    pub fn from_leaves<I, B>(leaves: I) -> MerkleTree
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let hashes = leaves
            .into_iter()
            .map(|leaf| leaf_hash(leaf.as_ref()))
            .collect();
        MerkleTree::from_leaf_hashes(hashes)
    }

    /// Build the tree over leaf hashes already computed with [`leaf_hash`].
    pub fn from_leaf_hashes(leaf_hashes: Vec<Digest>) -> MerkleTree {
        if leaf_hashes.is_empty() {
            return MerkleTree { levels: Vec::new() };
        }
        let mut levels = vec![leaf_hashes];
        while let Some(below) = levels.last().filter(|level| level.len() > 1) {
            levels.push(level_above(below));
        }
        MerkleTree { levels }
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// True for a tree without leaves.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The root hash ([`empty_root`] for an empty tree).
    pub fn root(&self) -> Digest {
        self.levels
            .last()
            .and_then(|level| level.first())
            .copied()
            .unwrap_or_else(empty_root)
    }

    /// The lowest level with at most `max_nodes` nodes, as a cap (the root alone when
    /// `max_nodes` is 0 or 1).
    pub fn cap(&self, max_nodes: u64) -> MerkleCap {
        let found = self
            .levels
            .iter()
            .enumerate()
            .find(|(_, nodes)| nodes.len() as u64 <= max_nodes.max(1));
        match found {
            Some((level, nodes)) => MerkleCap {
                level: u32::try_from(level).unwrap_or(u32::MAX),
                nodes: nodes.clone(),
            },
            None => MerkleCap {
                level: 0,
                nodes: Vec::new(),
            },
        }
    }

    /// The sibling hashes from leaf `index` up to `cap`'s level (see [`verify_to_cap`]), or
    /// `None` past the last leaf or above the root.
    pub fn path_to_cap(&self, index: u64, cap: &MerkleCap) -> Option<Vec<Digest>> {
        let level = usize::try_from(cap.level).ok()?;
        if level >= self.levels.len() {
            return None;
        }
        self.path_up_to(index, level)
    }

    /// The sibling hashes from leaf `index` up to (not including) level `level`, or `None`
    /// past the last leaf.
    fn path_up_to(&self, index: u64, level: usize) -> Option<Vec<Digest>> {
        if index >= self.len() {
            return None;
        }
        let mut path = Vec::with_capacity(level);
        let mut position = usize::try_from(index).ok()?;
        for nodes in &self.levels[..level] {
            // No sibling: this node moves up unchanged and adds nothing to the path.
            if let Some(hash) = nodes.get(position ^ 1) {
                path.push(*hash);
            }
            position /= 2;
        }
        Some(path)
    }

    /// The inclusion proof of leaf `index`, or `None` past the last leaf.
    pub fn proof(&self, index: u64) -> Option<MerkleProof> {
        // Up to the root's level (`len() - 1`; an empty tree has no leaf to prove).
        let path = self.path_up_to(index, self.levels.len().checked_sub(1)?)?;
        Some(MerkleProof {
            index,
            count: self.len(),
            path,
        })
    }
}

/// Computes the root of a stream of leaves in O(log n) memory.
#[derive(Debug, Clone, Default)]
pub struct RootBuilder {
    /// Roots of the perfect subtrees so far, largest first, with their height.
    stack: Vec<(u32, Digest)>,
    count: u64,
}

impl RootBuilder {
    /// Add the next leaf's data.
    pub fn push(&mut self, leaf: &[u8]) {
        self.push_hash(leaf_hash(leaf));
    }

    /// Add the next leaf, already hashed with [`leaf_hash`].
    pub fn push_hash(&mut self, hash: Digest) {
        let mut node = (0u32, hash);
        while let Some(&(height, left)) = self.stack.last() {
            if height != node.0 {
                break;
            }
            self.stack.pop();
            node = (height + 1, node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.count += 1;
    }

    /// Number of leaves pushed.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True before the first leaf.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The root of the leaves pushed so far.
    pub fn root(&self) -> Digest {
        // The perfect subtrees, largest first, are exactly RFC 6962's split of the count into
        // a power of two and the rest: fold them from the right.
        let mut nodes = self.stack.iter().rev();
        let Some(&(_, mut root)) = nodes.next() else {
            return empty_root();
        };
        for (_, left) in nodes {
            root = node_hash(left, &root);
        }
        root
    }
}

/// Most nodes in a [`MerkleCap`]: 4096 hashes, 128 KiB (175 KiB of base64 in the batch's
/// manifest record, well under the stream's 1 MiB record limit). A million-leaf batch then
/// needs 8 hashes (256 bytes) per request, a batch of up to 4096 none; the next power, 16384
/// nodes, would save 64 bytes per request for 512 KiB more per batch in every worker's memory.
pub const CAP_NODES: u64 = 4096;

/// The level a `count`-leaf tree's cap of at most `max_nodes` nodes sits at: the lowest
/// with that few nodes, as [`MerkleTree::cap`] picks it.
pub fn cap_level(count: u64, max_nodes: u64) -> u32 {
    let (mut level, mut nodes) = (0, count);
    while nodes > max_nodes.max(1) {
        nodes = nodes.div_ceil(2);
        level += 1;
    }
    level
}

/// The cap of a stream of leaves whose number is known in advance, without the tree: node
/// `i` of level `L` is the root of leaves `i·2^L … (i+1)·2^L − 1` (the last group may be
/// shorter), so each group of `2^L` leaf hashes is folded as it completes and dropped.
/// Memory: the cap and one group. [`CapGroup`] rebuilds a group's proofs from its leaves.
#[derive(Debug, Clone)]
pub struct CapBuilder {
    level: u32,
    group: RootBuilder,
    nodes: Vec<Digest>,
    count: u64,
    announced: u64,
}

impl CapBuilder {
    /// For a tree of `count` leaves and a cap of at most `max_nodes` nodes.
    pub fn new(count: u64, max_nodes: u64) -> CapBuilder {
        let level = cap_level(count, max_nodes);
        CapBuilder {
            level,
            group: RootBuilder::default(),
            nodes: Vec::with_capacity(usize::try_from(count.div_ceil(1 << level)).unwrap_or(0)),
            count: 0,
            announced: count,
        }
    }

    /// Add the next leaf, already hashed with [`leaf_hash`].
    pub fn push_hash(&mut self, hash: Digest) {
        self.group.push_hash(hash);
        self.count += 1;
        if self.group.len() == 1 << self.level {
            self.nodes.push(std::mem::take(&mut self.group).root());
        }
    }

    /// Leaves pushed.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True before the first leaf.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The cap of the leaves pushed, the one [`MerkleTree::cap`] gives; `None` unless as
    /// many leaves were pushed as announced (the level depends on the count).
    pub fn finish(mut self) -> Option<MerkleCap> {
        if self.count != self.announced {
            return None;
        }
        if !self.group.is_empty() {
            self.nodes.push(self.group.root());
        }
        Some(MerkleCap {
            level: self.level,
            nodes: self.nodes,
        })
    }
}

/// One group of leaves under a cap node ([`CapBuilder`]): the paths of its leaves up to the
/// cap, which are the paths [`MerkleTree::path_to_cap`] gives in the whole tree (the groups
/// are aligned on `2^level`, so every sibling below the cap lies in the same group).
#[derive(Debug, Clone)]
pub struct CapGroup {
    tree: MerkleTree,
}

impl CapGroup {
    /// The group under `cap`'s node `index`, from its leaf hashes, or `None` when they do
    /// not fold up to that node (other leaves, or more or fewer of them than it covers).
    pub fn new(cap: &MerkleCap, index: u64, leaf_hashes: Vec<Digest>) -> Option<CapGroup> {
        let node = cap.nodes.get(usize::try_from(index).ok()?)?;
        if leaf_hashes.len() as u64 > 1u64.checked_shl(cap.level)? {
            return None;
        }
        let tree = MerkleTree::from_leaf_hashes(leaf_hashes);
        (tree.root() == *node && !tree.is_empty()).then_some(CapGroup { tree })
    }

    /// The sibling hashes from the group's leaf `index` up to the cap.
    pub fn path(&self, index: u64) -> Option<Vec<Digest>> {
        self.tree.proof(index).map(|proof| proof.path)
    }
}

/// One whole level of a tree: the nodes `level` steps above the leaves, left to right.
///
/// Trusted only once [`MerkleCap::fits`] the signed count and [`MerkleCap::root`] equals the
/// signed root: then every node is the tree's own (finding other nodes with the same root is
/// a SHA-256 collision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerkleCap {
    /// Steps above the leaves (0: the leaf hashes themselves).
    pub level: u32,
    /// The level's nodes: `ceil(count / 2^level)` of them. One base64 string on the wire.
    #[serde(
        serialize_with = "path_to_base64",
        deserialize_with = "cap_from_base64"
    )]
    pub nodes: Vec<Digest>,
}

impl MerkleCap {
    /// True when the cap has exactly the nodes its level has in a `count`-leaf tree.
    pub fn fits(&self, count: u64) -> bool {
        self.level < 64 && self.nodes.len() as u64 == count.div_ceil(1u64 << self.level)
    }

    /// The root the cap's nodes fold up to (RFC 6962, bottom-up like [`MerkleTree`]).
    pub fn root(&self) -> Digest {
        let mut level = self.nodes.clone();
        while level.len() > 1 {
            level = level_above(&level);
        }
        level.first().copied().unwrap_or_else(empty_root)
    }
}

/// True when `leaf` (a [`leaf_hash`]) is leaf `index` of the `count`-leaf tree whose level
/// `cap.level` is `cap`, by `path` (sibling hashes from the leaf up to the cap, as
/// [`MerkleTree::path_to_cap`] gives them). `count` must be the signed one and `cap` checked
/// against the signed root first ([`MerkleCap::fits`], [`MerkleCap::root`]).
pub fn verify_to_cap(
    leaf: &Digest,
    index: u64,
    count: u64,
    path: &[Digest],
    cap: &MerkleCap,
) -> bool {
    if index >= count || !cap.fits(count) {
        return false;
    }
    let mut siblings = path.iter();
    let (mut position, mut size, mut hash) = (index, count, *leaf);
    for _ in 0..cap.level {
        if position % 2 == 1 {
            let Some(left) = siblings.next() else {
                return false;
            };
            hash = node_hash(left, &hash);
        } else if position + 1 < size {
            let Some(right) = siblings.next() else {
                return false;
            };
            hash = node_hash(&hash, right);
        }
        // Else the last node of its level, without a neighbour: it moves up unchanged.
        position /= 2;
        size = size.div_ceil(2);
    }
    siblings.next().is_none()
        && usize::try_from(position)
            .ok()
            .and_then(|position| cap.nodes.get(position))
            == Some(&hash)
}

/// The inclusion proof of one leaf: its index, the tree's leaf count and the sibling hashes
/// from the leaf upwards.
///
/// On the wire the path is one base64 string of the concatenated hashes (a million-leaf tree
/// gives 20 hashes, 856 characters), not a list of hex strings twice that size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerkleProof {
    /// Position of the leaf, from 0.
    pub index: u64,
    /// Number of leaves in the tree.
    pub count: u64,
    /// Sibling hashes, leaf level first.
    #[serde(
        serialize_with = "path_to_base64",
        deserialize_with = "path_from_base64"
    )]
    pub path: Vec<Digest>,
}

impl MerkleProof {
    /// True when `leaf_data` is leaf `self.index` of the `self.count`-leaf tree with `root`.
    pub fn verify(&self, leaf_data: &[u8], root: &Digest) -> bool {
        verify(leaf_data, self.index, self.count, &self.path, root)
    }
}

/// True when `leaf_data` is leaf `index` of the `count`-leaf tree with `root`, by `proof`
/// (RFC 9162, section 2.1.3.2).
///
/// `root` *and* `count` must come from the signed manifest: a path along the left edge is
/// the same for several counts, so the proof alone does not pin the count.
pub fn verify(leaf_data: &[u8], index: u64, count: u64, proof: &[Digest], root: &Digest) -> bool {
    verify_hash(&leaf_hash(leaf_data), index, count, proof, root)
}

/// As [`verify`], for a leaf already hashed with [`leaf_hash`].
pub fn verify_hash(leaf: &Digest, index: u64, count: u64, proof: &[Digest], root: &Digest) -> bool {
    if index >= count {
        return false;
    }
    let mut position = index;
    let mut last = count - 1;
    let mut hash = *leaf;
    for sibling in proof {
        if last == 0 {
            return false;
        }
        if position & 1 == 1 || position == last {
            hash = node_hash(sibling, &hash);
            if position & 1 == 0 {
                // A right-edge node that moved up unchanged: climb until it is a right child.
                while position & 1 == 0 && position != 0 {
                    position >>= 1;
                    last >>= 1;
                }
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        position >>= 1;
        last >>= 1;
    }
    last == 0 && hash == *root
}

fn path_to_base64<S: Serializer>(path: &[Digest], serializer: S) -> Result<S::Ok, S::Error> {
    use base64::Engine as _;
    let bytes: Vec<u8> = path.iter().flat_map(|digest| digest.0).collect();
    serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn path_from_base64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Digest>, D::Error> {
    // Far above the 64 levels a u64 leaf count can need; bounds what a message can make us
    // decode.
    digests_from_base64(deserializer, 64, "Merkle proof longer than 64 hashes")
}

fn cap_from_base64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Digest>, D::Error> {
    // Twice what a producer writes: a bound on what a record can make us decode.
    digests_from_base64(
        deserializer,
        2 * CAP_NODES as usize,
        "Merkle cap of more than 8192 hashes",
    )
}

fn digests_from_base64<'de, D: Deserializer<'de>>(
    deserializer: D,
    max_digests: usize,
    too_long: &str,
) -> Result<Vec<Digest>, D::Error> {
    use base64::Engine as _;
    let max_chars = 4 * max_digests * Digest::LEN / 3 + 4;
    let text = String::deserialize(deserializer)?;
    if text.len() > max_chars {
        return Err(serde::de::Error::custom(too_long));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|error| {
            serde::de::Error::custom(format!("Merkle hashes are not base64: {error}"))
        })?;
    if bytes.len() % Digest::LEN != 0 {
        return Err(serde::de::Error::custom(
            "Merkle hashes: the length is not a multiple of 32 bytes",
        ));
    }
    digests_of(&bytes)
        .ok_or_else(|| serde::de::Error::custom("Merkle hashes: not a multiple of 32 bytes"))
}

/// `bytes` as consecutive 32-byte digests; `None` when its length is not a multiple of 32.
pub fn digests_of(bytes: &[u8]) -> Option<Vec<Digest>> {
    if !bytes.len().is_multiple_of(Digest::LEN) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(Digest::LEN)
            .map(|chunk| {
                let mut digest = [0u8; Digest::LEN];
                digest.copy_from_slice(chunk);
                Digest(digest)
            })
            .collect(),
    )
}

#[cfg(test)]
#[path = "merkle_tests.rs"]
mod tests;
