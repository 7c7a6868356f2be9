//! What the collectors of a QEMU have durably written: the record a collector
//! leaves in the segment for the next one.
//!
//! A collector drains records into memory and writes them out as Parquet
//! parts later; it releases ring space as it drains. If it dies, the records
//! it drained but had not written are gone from the ring, and the records it
//! wrote but had not yet released will be drained again. To account for both
//! exactly, the collector writes its parts in *commit groups*: all tables are
//! cut at the same point of the drain, and once every part of group `g` is
//! renamed into place it publishes here, per vCPU, how many of that vCPU's
//! event records (counted from its ring's first, see [`event_index`]) have
//! all their rows in groups `<= g`.
//!
//! The next collector reads that at attach. Records below a vCPU's count are
//! in the previous capture's committed parts (skipped when it continues the
//! same capture directory, whose parts of later groups it removes); records
//! between the count and the ring's released position were drained by a
//! collector that died and are lost, and counted as such.
//!
//! Publication must be atomic with respect to a collector killed at any
//! instruction: the group and the per-vCPU counts go into one of two slots,
//! the one not in use, and a single store of `Header::commit_slot` then makes
//! it the current one. Only the collector that holds the attach writes.

use crate::layout::{SegmentView, COMMIT_SLOTS};
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
    /// The last commit group whose parts are all written (0: none yet; groups
    /// are numbered from 1).
    pub group: u64,
    /// Per vCPU: event records whose rows are all in groups `<= group`.
    pub events: Vec<u64>,
}

/// The current commit of `view` (all zero when no collector committed yet).
pub fn read(view: &SegmentView) -> Committed {
    let n = view.geometry.n_vcpus;
    // Acquire: pairs with `publish`'s Release store; the slot's contents
    // written before it are visible.
    let slot = view.header().commit_slot.load(Ordering::Acquire) as usize;
    if slot == 0 || slot > COMMIT_SLOTS {
        return Committed {
            collector_pid: 0,
            group: 0,
            events: vec![0; n as usize],
        };
    }
    let s = slot - 1;
    Committed {
        collector_pid: view.header().commit_collector_pid[s].load(Ordering::Relaxed),
        group: view.header().commit_group[s].load(Ordering::Relaxed),
        events: (0..n)
            .map(|v| view.vcpu(v).committed_events[s].load(Ordering::Relaxed))
            .collect(),
    }
}

/// Publishes `commit` as the current one (by the attached collector only).
pub fn publish(view: &SegmentView, commit: &Committed) {
    let current = view.header().commit_slot.load(Ordering::Relaxed) as usize;
    // The slot not in use: 1-based in `commit_slot`, 0 meaning none.
    let s = if current == 1 { 1 } else { 0 };
    view.header().commit_group[s].store(commit.group, Ordering::Relaxed);
    view.header().commit_collector_pid[s].store(commit.collector_pid, Ordering::Relaxed);
    for (v, &n) in commit.events.iter().enumerate() {
        if (v as u32) < view.geometry.n_vcpus {
            view.vcpu(v as u32).committed_events[s].store(n, Ordering::Relaxed);
        }
    }
    // Release: a reader that sees the new slot sees its contents.
    view.header()
        .commit_slot
        .store(s as u32 + 1, Ordering::Release);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::HeapRing;

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
