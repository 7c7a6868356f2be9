//! The translated blocks the drain has seen described (whose `code` rows it
//! has), by block id: looked up once per executed block (about 100M times
//! for an OS boot), to count the blocks whose description never arrived.
//!
//! The shim numbers blocks 0, 1, 2, ... in translation order, in the bits of
//! their ids above the length (`trace_schema::chunk::block_id`), so the set
//! is a bit vector indexed by that number: one memory access per lookup (a
//! hash map took a fifth of the drain's time, probing). A number far beyond
//! the ones seen (a damaged or foreign ring) goes to a small set instead, so
//! that it cannot make the vector huge.

use polars::prelude::PlHashSet;
use trace_schema::chunk::BLOCK_LENGTH_BITS;

/// How far past the largest number stored so far a new one may grow the vector.
const MAX_GAP: u64 = 1 << 24;

#[derive(Default)]
pub struct DescribedBlocks {
    /// Bit `n`: block number `n` is described.
    dense: Vec<u64>,
    /// Ids whose numbers were too far ahead of `dense` when described.
    sparse: PlHashSet<u64>,
}

impl DescribedBlocks {
    #[inline]
    pub fn contains(&self, id: u64) -> bool {
        let n = id >> BLOCK_LENGTH_BITS;
        match self.dense.get((n / 64) as usize) {
            Some(&bits) if bits >> (n % 64) & 1 != 0 => true,
            _ => !self.sparse.is_empty() && self.sparse.contains(&id),
        }
    }

    pub fn insert(&mut self, id: u64) {
        let n = id >> BLOCK_LENGTH_BITS;
        if n < self.dense.len() as u64 * 64 + MAX_GAP {
            let word = (n / 64) as usize;
            if word >= self.dense.len() {
                self.dense.resize(word + 1, 0);
            }
            self.dense[word] |= 1 << (n % 64);
        } else {
            self.sparse.insert(id);
        }
    }
}

impl FromIterator<u64> for DescribedBlocks {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> DescribedBlocks {
        let mut b = DescribedBlocks::default();
        for id in iter {
            b.insert(id);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace_schema::chunk::block_id;

    #[test]
    fn dense_and_far_ids() {
        let mut b = DescribedBlocks::default();
        assert!(!b.contains(block_id(0, 1)));
        b.insert(block_id(0, 3));
        b.insert(block_id(2, 1));
        b.insert(u64::MAX); // far beyond: kept aside, the vector stays small
        assert!(b.contains(block_id(0, 3)) && !b.contains(block_id(1, 3)));
        assert!(b.contains(block_id(2, 1)) && b.contains(u64::MAX));
        assert!(b.dense.len() <= 1);
        // A later dense insert past an id kept aside does not hide it.
        b.insert(block_id(MAX_GAP + 1, 5));
        assert!(b.contains(block_id(MAX_GAP + 1, 5)));
        assert!(b.contains(u64::MAX));
    }
}
