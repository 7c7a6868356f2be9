//! What the collectors of a QEMU have durably written: the record a collector
//! leaves in the segment for the next one.
//!
//! A collector drains records into memory and writes them out as Parquet
//! parts later; it releases ring space as it drains. If it dies, the records
//! it drained but had not written are gone from the ring, and the records it
//! wrote but had not yet released will be drained again. To account for both
//! exactly, each time a part of output stream (table) `t` is renamed into
//! place the collector publishes here how many parts of `t` are written, and,
//! per vCPU, how many of that vCPU's events (counted from its ring's first:
//! a chunk says how many came before it, see [`index_at_tail`]) have all
//! their `t` rows in those parts.
//!
//! The next collector reads that at attach. Events below a vCPU's count for
//! `t` have their `t` rows in the previous capture's committed parts (not
//! written again when it continues the same capture directory, whose later
//! parts it removes); events between the count and the ring's released
//! position were drained by a collector that died: their `t` rows are lost,
//! and counted as such.
//!
//! Publication must be atomic with respect to a collector killed at any
//! instruction: the counts go into one of two slots, the one not in use, and
//! a single store of `Header::commit_slot` then makes it the current one.
//! Only the collector that holds the attach writes.

#[cfg(not(loom))]
use crate::chunk;
use crate::layout::{SegmentView, COMMIT_SLOTS, COMMIT_STREAMS};
#[cfg(not(loom))]
use crate::ring::Consumer;
use crate::sync::Ordering;

/// The streams (the collector's tables) the commit record counts, in the
/// order of its slots. Part of the segment's layout: a change bumps
/// `layout::LAYOUT_VERSION`.
pub const STREAMS: [&str; 5] = ["mem", "mmio", "block_exec", "code", "stats"];

/// The index of the first event at the event ring `consumer`'s position
/// (the released one, where a new collector starts), which it then counts
/// on from: the first index of the chunk published there, or, with none
/// published, the count the last consumer left with its position
/// (`RingControl::tail_weight`; a consumer killed between storing that and
/// its position leaves a chunk published at the position, so the count is
/// only used when it is right).
#[cfg(not(loom))]
pub fn index_at_tail(consumer: &mut Consumer) -> Result<u64, String> {
    let index = match consumer.peek().map_err(|e| e.to_string())? {
        Some(msg) => {
            chunk::parse(msg)
                .map_err(|why| format!("corrupt record at the ring's released position: {why}"))?
                .header()
                .first_index
        }
        None => consumer.weight(),
    };
    consumer.set_weight(index);
    Ok(index)
}

/// A published commit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Committed {
    /// The collector that committed (0: none yet).
    pub collector_pid: u32,
    /// Per stream: how many parts (numbered from 0) are written.
    pub parts: [u64; COMMIT_STREAMS],
    /// Per vCPU, per stream: events whose rows of that stream are all in
    /// those parts.
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
        // Safety: `mem` holds `g.segment_bytes()` aligned bytes and outlives
        // `view`; `g` is not `check`ed (its rings are small) but all its offsets are in `mem`.
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

    /// The index at the released position: from the chunk there, else
    /// from the count the last consumer left, through many wraps.
    #[test]
    fn index_at_tail_counts_events_through_wraps() {
        let ring_bytes = 8 * chunk::CHUNK_BYTES as u64;
        let ring = HeapRing::new(ring_bytes);
        let (mut p, mut c) = ring.split();
        let mut chunk = chunk::ChunkBuffer::blocks();
        let mut published = 0u64;
        for n in 1..=300u64 {
            chunk.start(0, 0);
            for _ in 0..n {
                chunk.push_block(chunk::block_id(1, 1));
            }
            assert!(p.push(chunk.seal(0, published)));
            chunk.clear();
            // A new consumer sees the chunk: its first index.
            assert_eq!(index_at_tail(&mut c).unwrap(), published);
            published += n;
            c.drain(|m| Ok::<u64, ()>(chunk::parse(m).unwrap().blocks().count() as u64))
                .unwrap();
            // Nothing published: the count the drain left.
            assert_eq!(index_at_tail(&mut c).unwrap(), published);
        }
        assert!(p.push(&[0, 0, 0, 0, 1, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9]));
        assert!(index_at_tail(&mut c)
            .unwrap_err()
            .contains("corrupt record"));
    }
}
