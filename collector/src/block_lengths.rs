//! The instruction count of every translated block the drain has seen
//! described, by block id: looked up once per block event (about 100M times
//! for an OS boot).
//!
//! The shim numbers blocks 0, 1, 2, ... in translation order, so the counts
//! live in a vector indexed by id: one memory access per lookup, 4 bytes per
//! block (a hash map took a fifth of the drain's time, probing). An id far
//! beyond the ones seen (a damaged or foreign ring) goes to a small map
//! instead, so that it cannot make the vector huge.

use polars::prelude::PlHashMap;

/// How far past the largest id stored so far a new id may grow the vector.
const MAX_GAP: u64 = 1 << 20;

#[derive(Default)]
pub struct BlockLengths {
    /// `dense[id]`: the count + 1 (0: not described).
    dense: Vec<u32>,
    /// Ids that were too far ahead of `dense` when described.
    sparse: PlHashMap<u64, u32>,
}

impl BlockLengths {
    pub fn get(&self, id: u64) -> Option<u32> {
        match self.dense.get(id as usize) {
            Some(&n) if n > 0 => Some(n - 1),
            _ if self.sparse.is_empty() => None,
            _ => self.sparse.get(&id).copied(),
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    /// Records block `id`'s instruction count (`insns` is at most QEMU's
    /// 512 per block; larger values are kept as `u32::MAX - 1`).
    pub fn insert(&mut self, id: u64, insns: u32) {
        let stored = insns.min(u32::MAX - 1) + 1;
        if id < self.dense.len() as u64 + MAX_GAP {
            let i = id as usize;
            if i >= self.dense.len() {
                self.dense.resize(i + 1, 0);
            }
            self.dense[i] = stored;
        } else {
            self.sparse.insert(id, stored - 1);
        }
    }
}

impl FromIterator<(u64, u32)> for BlockLengths {
    fn from_iter<I: IntoIterator<Item = (u64, u32)>>(iter: I) -> BlockLengths {
        let mut b = BlockLengths::default();
        for (id, n) in iter {
            b.insert(id, n);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_far_ids() {
        let mut b = BlockLengths::default();
        assert_eq!(b.get(0), None);
        b.insert(0, 3);
        b.insert(2, 0);
        b.insert(u64::MAX, 7); // far beyond: kept aside, the vector stays small
        assert_eq!((b.get(0), b.get(1), b.get(2)), (Some(3), None, Some(0)));
        assert_eq!(b.get(u64::MAX), Some(7));
        assert!(b.dense.len() <= 3);
        // A later dense insert past an id kept aside does not hide it.
        b.insert(MAX_GAP + 1, 5);
        assert_eq!(b.get(MAX_GAP + 1), Some(5));
        assert!(b.contains(u64::MAX) && !b.contains(1));
    }
}
