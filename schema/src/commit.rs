//! What the collectors of a QEMU have durably written: the record a collector
//! leaves in the segment for the next one.
//!
//! A collector drains records into memory and writes them out as Parquet
//! parts later; it releases ring space as it drains. If it dies, the records
//! it drained but had not written are gone from the ring, and the records it
//! wrote but had not yet released will be drained again. To account for both
//! exactly, each time a part of output stream (table) `t` is renamed into
//! place the collector publishes here how many parts of `t` are written, and,
//! per vCPU, how many of that vCPU's event records (counted from its ring's
//! first, see [`event_index`]) have all their `t` rows in those parts.
//!
//! The next collector reads that at attach. Records below a vCPU's count for
//! `t` have their `t` rows in the previous capture's committed parts (not
//! written again when it continues the same capture directory, whose later
//! parts it removes); records between the count and the ring's released
//! position were drained by a collector that died: their `t` rows are lost,
//! and counted as such.
//!
//! Publication must be atomic with respect to a collector killed at any
//! instruction: the counts go into one of two slots, the one not in use, and
//! a single store of `Header::commit_slot` then makes it the current one.
//! Only the collector that holds the attach writes.

use crate::layout::{SegmentView, COMMIT_SLOTS, COMMIT_STREAMS};
use crate::record::EVENT_RECORD_BYTES;
use crate::sync::Ordering;

/// The number of event records before ring position `position`, in an event
/// ring of `ring_bytes` (a power of two) that holds only
/// `EVENT_RECORD_BYTES`-byte records: the producer fills each lap of the ring
/// with as many records as fit, then wraps, so positions and record counts
/// correspond one to one.
pub fn event_index(position: u64, ring_bytes: u64) -> u64 {
    let per_lap = ring_bytes / EVENT_RECORD_BYTES as u64;
    (position / ring_bytes) * per_lap + (position % ring_bytes) / EVENT_RECORD_BYTES as u64
}

/// A published commit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Committed {
    /// The collector that committed (0: none yet).
    pub collector_pid: u32,
    /// Per stream: how many parts (numbered from 0) are written.
    pub parts: [u64; COMMIT_STREAMS],
    /// Per vCPU, per stream: event records whose rows of that stream are all
    /// in those parts.
    pub events: Vec<[u64; COMMIT_STREAMS]>,
}

/// The current commit of `view` (all zero when no collector committed yet).
pub fn read(view: &SegmentView) -> Committed {
    let n = view.geometry.n_vcpus;
    // Acquire: pairs with `publish`'s Release store; the slot's contents
    // written before it are visible.
    let slot = view.header().commit_slot.load(Ordering::Acquire) as usize;
    if slot == 0 || slot > COMMIT_SLOTS {
        return Committed {
            events: vec![[0; COMMIT_STREAMS]; n as usize],
            ..Default::default()
        };
    }
    let s = slot - 1;
    let h = view.header();
    Committed {
        collector_pid: h.commit_collector_pid[s].load(Ordering::Relaxed),
        parts: std::array::from_fn(|t| h.commit_parts[s][t].load(Ordering::Relaxed)),
        events: (0..n)
            .map(|v| {
                let c = &view.vcpu(v).committed_events[s];
                std::array::from_fn(|t| c[t].load(Ordering::Relaxed))
            })
            .collect(),
    }
}

/// Publishes `commit` as the current one (by the attached collector only).
pub fn publish(view: &SegmentView, commit: &Committed) {
    let h = view.header();
    let current = h.commit_slot.load(Ordering::Relaxed) as usize;
    // The slot not in use: 1-based in `commit_slot`, 0 meaning none.
    let s = if current == 1 { 1 } else { 0 };
    h.commit_collector_pid[s].store(commit.collector_pid, Ordering::Relaxed);
    for (t, &p) in commit.parts.iter().enumerate() {
        h.commit_parts[s][t].store(p, Ordering::Relaxed);
    }
    for (v, counts) in commit.events.iter().enumerate() {
        if (v as u32) < view.geometry.n_vcpus {
            for (t, &n) in counts.iter().enumerate() {
                view.vcpu(v as u32).committed_events[s][t].store(n, Ordering::Relaxed);
            }
        }
    }
    // Release: a reader that sees the new slot sees its contents.
    h.commit_slot.store(s as u32 + 1, Ordering::Release);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::HeapRing;

    /// What is published is what is read, slot after slot.
    #[test]
    fn publish_then_read() {
        use crate::layout::{Geometry, SegmentView};
        let g = Geometry {
            n_vcpus: 2,
            event_ring_bytes: 4096,
            meta_ring_bytes: 4096,
        };
        let mut mem = vec![0u64; g.segment_bytes().unwrap() as usize / 8];
        let view = unsafe { SegmentView::new(mem.as_mut_ptr() as *mut u8, g) };
        assert_eq!(read(&view).events, vec![[0; COMMIT_STREAMS]; 2]);
        for k in 1..5u64 {
            let c = Committed {
                collector_pid: 40 + k as u32,
                parts: [k, 2 * k, 0, 1, k],
                events: vec![[10 * k, 5, 0, 0, 10 * k], [20 * k, 7, 1, 0, 20 * k]],
            };
            publish(&view, &c);
            assert_eq!(read(&view), c);
        }
    }

    /// Positions after n records, through many wraps, give back n.
    #[test]
    fn event_index_counts_records_through_wraps() {
        let ring_bytes = 4096;
        let mut ring = HeapRing::new(ring_bytes);
        let (mut p, mut c) = ring.split();
        let mut record = vec![0u8; EVENT_RECORD_BYTES];
        // A one-segment Cap'n Proto message of 9 words: 80 bytes.
        record[4..8].copy_from_slice(&9u32.to_le_bytes());
        for n in 1..=1000u64 {
            assert!(p.push(&record));
            assert_eq!(event_index(p.position(), ring_bytes), n, "after {n}");
            c.drain(|_| Ok::<(), ()>(())).unwrap();
        }
    }
}
