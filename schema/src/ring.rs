//! A single-producer single-consumer byte ring in shared memory.
//!
//! The producer is one vCPU thread inside QEMU (the shim); the consumer is the
//! collector, another process. The ring carries Cap'n Proto messages in flat
//! form, one after another; a message's segment table is its length prefix
//! (see `message_len`). A message never wraps: when one does not fit before the
//! end of the buffer, the producer writes the one-word `WRAP_MARKER` there and
//! starts the message at offset 0.
//!
//! `head` and `tail` are byte positions that only grow (a u64 does not wrap in
//! the life of a capture); the offset in the buffer is `position % capacity`,
//! with `capacity` a power of two. Bytes `[tail, head)` are published and owned
//! by the consumer, everything else by the producer. Each side keeps its own
//! position in local memory and only reads the other's shared position when it
//! must, as `rtrb` does.
//!
//! Nothing read from shared memory is trusted by the consumer: a stale or
//! hostile segment can hold any bytes, so every position and length is checked
//! against the buffer before use, and a violation is a `RingError`, never an
//! out-of-bounds read.

use std::sync::Arc;

use crate::sync::{AtomicU64, Ordering};

/// A word that cannot start a Cap'n Proto message (it would announce 2^32
/// segments): "the rest of the buffer is padding, continue at offset 0".
pub const WRAP_MARKER: u64 = u64::MAX;

/// Most segments a message in a ring may have. The shim's meta messages have
/// one; the bound keeps a hostile segment table from making us read far.
pub const MAX_SEGMENTS: u32 = 64;

/// How many consumed bytes `Consumer::drain` may hold before it releases them
/// (16 full chunks): often enough that a waiting producer and a consumer's
/// successor lose little, rarely enough that the stores cost nothing.
pub const RELEASE_EVERY: u64 = 64 * 1024;

/// The shared part of a ring. `head` and `tail` live on separate 128-byte
/// blocks so that the producer's and consumer's stores do not share a cache
/// line (or its adjacent-line prefetch partner).
#[repr(C)]
pub struct RingControl {
    /// Written by the producer only: bytes published so far.
    pub head: AtomicU64,
    _pad_head: [u8; 120],
    /// Written by the consumer only: bytes consumed so far.
    pub tail: AtomicU64,
    /// Written by the consumer only, before each store of `tail`: the sum
    /// of the weights of the messages before `tail` (what a message weighs
    /// is the consumer's business: the collector counts events), so that a
    /// later consumer can go on counting from there.
    pub tail_weight: AtomicU64,
    _pad_tail: [u8; 112],
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<RingControl>() == crate::layout::RING_CONTROL_BYTES);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    /// `head` is behind `tail` or more than a capacity ahead of it.
    BadPositions { head: u64, tail: u64, capacity: u64 },
    /// A message header that is not a valid segment table, or a message that
    /// does not fit in the space published for it.
    BadMessage { offset: u64, reason: &'static str },
}

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingError::BadPositions {
                head,
                tail,
                capacity,
            } => write!(
                f,
                "ring positions are inconsistent (head {head}, tail {tail}, capacity {capacity})"
            ),
            RingError::BadMessage { offset, reason } => {
                write!(f, "corrupt record at ring offset {offset}: {reason}")
            }
        }
    }
}

impl std::error::Error for RingError {}

/// Length in bytes of the flat Cap'n Proto message at the start of `bytes`,
/// read from its segment table, or why it is not one.
pub fn message_len(bytes: &[u8]) -> Result<usize, &'static str> {
    if bytes.len() < 8 {
        return Err("truncated segment table");
    }
    // One segment (every event record): the table is this one word. The
    // same checks as below, without the loop.
    let first = u64::from_le_bytes(bytes[0..8].try_into().unwrap());
    if first as u32 == 0 {
        let total = 8 + (first >> 32) * 8;
        return match total {
            8 => Err("empty message"),
            t if t > bytes.len() as u64 => Err("message longer than the bytes published"),
            t => Ok(t as usize),
        };
    }
    let segments = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as u64 + 1;
    if segments > MAX_SEGMENTS as u64 {
        return Err("too many segments");
    }
    // The table: a u32 count, a u32 size per segment, padded to a whole word.
    let table_bytes = (4 + 4 * segments).div_ceil(8) * 8;
    if (bytes.len() as u64) < table_bytes {
        return Err("truncated segment table");
    }
    let mut total = table_bytes;
    for s in 0..segments as usize {
        let at = 4 + 4 * s;
        let words = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as u64;
        total += words * 8;
    }
    if total > bytes.len() as u64 {
        return Err("message longer than the bytes published");
    }
    if total == table_bytes {
        return Err("empty message");
    }
    Ok(total as usize)
}

/// The producer's end. Not `Sync`: exactly one thread owns it.
pub struct Producer {
    control: *const RingControl,
    data: *mut u8,
    capacity: u64,
    /// Our own copy of the shared `head`: only we write it.
    head: u64,
    /// The consumer's `tail` as last read; it only grows, so a stale value only
    /// underestimates free space.
    cached_tail: u64,
    /// A `HeapRing`'s memory, kept alive while this end lives.
    _owner: Option<Arc<HeapRing>>,
}

// Safety: its pointers are to memory that `new`'s caller keeps mapped (or
// `_owner` keeps alive) for any thread; moving it keeps one producer.
unsafe impl Send for Producer {}

impl Producer {
    /// # Safety
    /// `control` and `data` (of `capacity` bytes, a power of two and a multiple
    /// of 8) must stay mapped for the producer's life, and no other producer
    /// may exist for this ring.
    pub unsafe fn new(control: *const RingControl, data: *mut u8, capacity: u64) -> Producer {
        debug_assert!(capacity.is_power_of_two() && capacity >= 8);
        // Safety: the caller keeps `control` mapped for our life.
        let c = unsafe { &*control };
        // Relaxed: at creation nobody else writes `head`; `tail` is re-read
        // with Acquire before any byte is overwritten.
        let head = c.head.load(Ordering::Relaxed);
        let cached_tail = c.tail.load(Ordering::Relaxed);
        Producer {
            control,
            data,
            capacity,
            head,
            cached_tail,
            _owner: None,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes published so far.
    pub fn position(&self) -> u64 {
        self.head
    }

    /// Appends one message (`msg.len()` a multiple of 8, at most half the
    /// capacity) and publishes it. Returns `false`, writing nothing, when the
    /// consumer has not freed enough space.
    #[inline(always)]
    pub fn push(&mut self, msg: &[u8]) -> bool {
        let Some(at) = self.reserve(msg.len() as u64) else {
            return false;
        };
        // Safety: for a `msg` as documented (whole words, at most half the
        // ring), `reserve` gave [at, at + len): in the buffer, not published.
        unsafe { write_words(self.data, at, msg) };
        self.publish(msg.len() as u64);
        true
    }

    /// As `push`, for a message of `N` bytes that `write` writes in place in
    /// the ring. `write` must write all `N` bytes: it is handed the ring's
    /// old bytes. The shim's event records go this way, straight into the
    /// ring: built on the stack and copied, the copy's 16-byte loads of the
    /// 8-byte stores just made could not be forwarded, and stalled.
    #[inline(always)]
    pub fn push_in_place<const N: usize>(&mut self, write: impl FnOnce(&mut [u8; N])) -> bool {
        let Some(at) = self.reserve(N as u64) else {
            return false;
        };
        #[cfg(not(loom))]
        // Safety: `reserve` handed us bytes [at, at + N) of the buffer,
        // which the consumer does not read until `publish`.
        write(unsafe { &mut *(self.data.add(at as usize) as *mut [u8; N]) });
        #[cfg(loom)]
        {
            let mut message = [0u8; N];
            write(&mut message);
            // Safety: as in `push`: [at, at + N) is ours, inside the buffer.
            unsafe { write_words(self.data, at, &message) };
        }
        self.publish(N as u64);
        true
    }

    /// Room for a message of `len` bytes (a multiple of 8, at most half the
    /// capacity): its offset in the buffer, after a wrap marker if it does
    /// not fit before the end; `None` when the consumer has not freed
    /// enough space.
    #[inline(always)]
    fn reserve(&mut self, len: u64) -> Option<u64> {
        // Checked in release builds too: `push` is safe, and the writes'
        // bounds rest on it. Once per message (a chunk), not per event.
        assert!(
            len.is_multiple_of(8) && len <= self.capacity / 2,
            "ring message of {len} bytes: not whole words, or over half the ring"
        );
        let offset = self.head & (self.capacity - 1);
        let until_end = self.capacity - offset;
        // A message that does not fit before the end costs the padding too.
        let needed = if len <= until_end {
            len
        } else {
            until_end + len
        };
        if self.head + needed - self.cached_tail > self.capacity {
            // Acquire: the consumer's reads of the bytes it released must
            // happen before we overwrite them (pairs with its Release store).
            // Safety: `new`'s caller keeps the control block mapped.
            self.cached_tail = unsafe { &*self.control }.tail.load(Ordering::Acquire);
            if self.head + needed - self.cached_tail > self.capacity {
                return None;
            }
        }
        if len > until_end {
            // Safety: `head` is a multiple of 8 (from 0, by whole words), so
            // `until_end >= 8`: the marker fits in [offset, capacity), free as checked above.
            unsafe { write_words(self.data, offset, &WRAP_MARKER.to_le_bytes()) };
            self.head += until_end;
            return Some(0);
        }
        Some(offset)
    }

    /// Publishes the `len` bytes written at the offset `reserve` gave.
    #[inline(always)]
    fn publish(&mut self, len: u64) {
        self.head += len;
        // Release: the message bytes (and any wrap marker) must be visible to
        // the consumer before the position that publishes them.
        // Safety: `new`'s caller keeps the control block mapped.
        unsafe { &*self.control }
            .head
            .store(self.head, Ordering::Release);
    }
}

/// The consumer's end.
pub struct Consumer {
    control: *const RingControl,
    data: *const u8,
    capacity: u64,
    /// Our own copy of the shared `tail`: only we write it.
    tail: u64,
    /// The weight of the messages before `tail` (`RingControl::tail_weight`).
    weight: u64,
    /// A `HeapRing`'s memory, kept alive while this end lives.
    _owner: Option<Arc<HeapRing>>,
}

// Safety: as for `Producer`: its memory is mapped (or owned through `_owner`)
// for any thread, and moving it keeps one consumer.
unsafe impl Send for Consumer {}

impl Consumer {
    /// # Safety
    /// `control` and `data` (of `capacity` bytes, a power of two and a multiple
    /// of 8) must stay mapped for the consumer's life, and no other consumer
    /// may exist for this ring.
    pub unsafe fn new(control: *const RingControl, data: *const u8, capacity: u64) -> Consumer {
        // Relaxed: only consumers write `tail`, and there is one at a time.
        // Safety: the caller keeps `control` mapped for our life.
        let c = unsafe { &*control };
        Consumer {
            control,
            data,
            capacity,
            tail: c.tail.load(Ordering::Relaxed),
            weight: c.tail_weight.load(Ordering::Relaxed),
            _owner: None,
        }
    }

    /// Sets the weight of the messages before our position, when the one
    /// `RingControl::tail_weight` says is not to be trusted (a consumer
    /// killed between storing it and `tail`: then a message is published at
    /// `tail`, which says it).
    pub fn set_weight(&mut self, weight: u64) {
        self.weight = weight;
    }

    /// The weight of the messages consumed so far.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// The message at our position, if one is published (after a wrap
    /// marker, the one at the start of the buffer), without consuming it.
    /// The bytes are in shared memory, unchecked beyond their length.
    #[cfg(not(loom))]
    pub fn peek(&self) -> Result<Option<&[u8]>, RingError> {
        // Safety: `new`'s caller keeps the control block mapped.
        let control = unsafe { &*self.control };
        // Acquire: as in `drain`.
        let head = control.head.load(Ordering::Acquire);
        if head < self.tail || head - self.tail > self.capacity {
            return Err(RingError::BadPositions {
                head,
                tail: self.tail,
                capacity: self.capacity,
            });
        }
        let mut tail = self.tail;
        let mut scratch = [0u8; 8];
        while tail < head {
            let offset = tail & (self.capacity - 1);
            let contiguous = (self.capacity - offset).min(head - tail);
            let bad = |reason| RingError::BadMessage { offset, reason };
            if contiguous < 8 {
                return Err(bad("published space shorter than a word"));
            }
            // Safety: `contiguous >= 8` (checked above) published bytes lie
            // inside the buffer from `offset`.
            unsafe { read_words(self.data, offset, &mut scratch) };
            if u64::from_le_bytes(scratch) == WRAP_MARKER {
                if offset == 0 {
                    return Err(bad("wrap marker at the start of the buffer"));
                }
                tail += self.capacity - offset;
                continue;
            }
            // Safety: [offset, offset + contiguous) is published and inside
            // the buffer; the producer does not write it before we release it.
            let bytes = unsafe {
                std::slice::from_raw_parts(self.data.add(offset as usize), contiguous as usize)
            };
            let len = message_len(bytes).map_err(bad)?;
            return Ok(Some(&bytes[..len]));
        }
        Ok(None)
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// Bytes published and not yet consumed (0 if the positions are corrupt).
    pub fn pending(&self) -> u64 {
        // Safety: `new`'s caller keeps the control block mapped.
        let head = unsafe { &*self.control }.head.load(Ordering::Relaxed);
        head.saturating_sub(self.tail)
    }

    /// Hands every message published so far to `each`, in order, releasing
    /// their space to the producer as it goes: every `RELEASE_EVERY` bytes and
    /// at the end. `each` returns the message's weight, added up in
    /// `tail_weight`. Returns the number of messages.
    ///
    /// Releasing as we go, not once per call, frees space for a producer that
    /// waits on a full ring sooner, and bounds what a consumer that dies
    /// mid-call has handed on (to `each`) without releasing: the next consumer
    /// starts at the released position and sees those messages again.
    ///
    /// `each` sees the bytes in place in shared memory: it must copy what it
    /// keeps. On error nothing after the last message `each` accepted is
    /// released, so the caller can report exactly where the ring went bad.
    pub fn drain<E>(
        &mut self,
        mut each: impl FnMut(&[u8]) -> Result<u64, E>,
    ) -> Result<usize, DrainError<E>> {
        // Safety: `new`'s caller keeps the control block mapped.
        let control = unsafe { &*self.control };
        // Acquire: the bytes the producer published must be visible before we
        // read them (pairs with its Release store of `head`).
        let head = control.head.load(Ordering::Acquire);
        if head < self.tail || head - self.tail > self.capacity {
            return Err(DrainError::Ring(RingError::BadPositions {
                head,
                tail: self.tail,
                capacity: self.capacity,
            }));
        }
        let mut count = 0;
        let mut tail = self.tail;
        let mut weight = self.weight;
        let mut scratch = [0u8; 8];
        while tail < head {
            let offset = tail & (self.capacity - 1);
            let contiguous = (self.capacity - offset).min(head - tail);
            let bad = |reason| DrainError::Ring(RingError::BadMessage { offset, reason });
            if contiguous < 8 {
                return Err(bad("published space shorter than a word"));
            }
            // Safety: `contiguous >= 8` (checked above) published bytes lie
            // inside the buffer from `offset`.
            unsafe { read_words(self.data, offset, &mut scratch) };
            if u64::from_le_bytes(scratch) == WRAP_MARKER {
                if offset == 0 {
                    return Err(bad("wrap marker at the start of the buffer"));
                }
                tail += self.capacity - offset;
                continue;
            }
            // Safety: [offset, offset + contiguous) is published and inside the
            // buffer; `bytes` is not used after `release` hands it back.
            let bytes = unsafe { slice_at(self.data, offset, contiguous) };
            let len = message_len(&bytes).map_err(bad)?;
            weight += each(&bytes[..len]).map_err(DrainError::Consumer)?;
            tail += len as u64;
            count += 1;
            if tail - self.tail >= RELEASE_EVERY {
                self.release(tail, weight);
            }
        }
        self.release(tail, weight);
        Ok(count)
    }

    fn release(&mut self, tail: u64, weight: u64) {
        // Safety: `new`'s caller keeps the control block mapped.
        let control = unsafe { &*self.control };
        self.tail = tail;
        self.weight = weight;
        // Relaxed: only a later consumer reads it, after it took the attach
        // over from us (which orders everything we did before it).
        control.tail_weight.store(weight, Ordering::Relaxed);
        // Release: our reads of the drained bytes must be complete before the
        // producer may overwrite them (pairs with its Acquire load of `tail`).
        control.tail.store(tail, Ordering::Release);
    }
}

/// Why `Consumer::drain` stopped.
#[derive(Debug)]
pub enum DrainError<E> {
    Ring(RingError),
    Consumer(E),
}

// The data region is plain memory in real use. Under loom it is an array of
// loom atomics accessed word by word with Relaxed ordering, so that the model
// checker can hand a reader a stale word whenever the ring's orderings do not
// forbid it: a missing Acquire/Release shows up as a wrong value read.

/// # Safety
/// `[at, at + src.len())` must lie inside the buffer at `data`, in bytes the
/// producer owns (not published).
#[cfg(not(loom))]
#[inline(always)]
unsafe fn write_words(data: *mut u8, at: u64, src: &[u8]) {
    // Safety: the caller's range is inside the buffer and ours alone, so the
    // live shared slice `src` cannot overlap it.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), data.add(at as usize), src.len()) };
}

/// # Safety
/// `[at, at + dst.len())` must lie inside the buffer at `data`, in bytes
/// published and not yet released.
#[cfg(not(loom))]
#[inline(always)]
unsafe fn read_words(data: *const u8, at: u64, dst: &mut [u8]) {
    // Safety: the caller's range is inside the buffer; `dst`, a `&mut`, cannot
    // overlap the published bytes we read.
    unsafe { std::ptr::copy_nonoverlapping(data.add(at as usize), dst.as_mut_ptr(), dst.len()) };
}

/// # Safety
/// As `read_words`, for `len` bytes; the caller must not use the slice after
/// it releases them.
#[cfg(not(loom))]
#[inline(always)]
unsafe fn slice_at<'a>(data: *const u8, at: u64, len: u64) -> std::borrow::Cow<'a, [u8]> {
    // Safety: the caller's range is inside the buffer, and the producer does not
    // write it until it is released, after the slice's last use.
    std::borrow::Cow::Borrowed(unsafe {
        std::slice::from_raw_parts(data.add(at as usize), len as usize)
    })
}

/// # Safety
/// As the non-loom `write_words`; `data` is `HeapRing`'s `AtomicU64`s, and
/// `at` and `src.len()` are multiples of 8.
#[cfg(loom)]
unsafe fn write_words(data: *mut u8, at: u64, src: &[u8]) {
    let words = data as *const AtomicU64;
    for (i, chunk) in src.chunks_exact(8).enumerate() {
        let w = u64::from_le_bytes(chunk.try_into().unwrap());
        // Safety: word `at / 8 + i` is one of the buffer's atomics (the
        // caller's range is inside it, in whole words).
        unsafe { &*words.add(at as usize / 8 + i) }.store(w, Ordering::Relaxed);
    }
}

/// # Safety
/// As the non-loom `read_words`; `data` is `HeapRing`'s `AtomicU64`s, and
/// `at` and `dst.len()` are multiples of 8.
#[cfg(loom)]
unsafe fn read_words(data: *const u8, at: u64, dst: &mut [u8]) {
    let words = data as *const AtomicU64;
    for (i, chunk) in dst.chunks_exact_mut(8).enumerate() {
        // Safety: word `at / 8 + i` is one of the buffer's atomics (the
        // caller's range is inside it, in whole words).
        let w = unsafe { &*words.add(at as usize / 8 + i) }.load(Ordering::Relaxed);
        chunk.copy_from_slice(&w.to_le_bytes());
    }
}

/// # Safety
/// As the loom `read_words`, for `len` bytes.
#[cfg(loom)]
unsafe fn slice_at<'a>(data: *const u8, at: u64, len: u64) -> std::borrow::Cow<'a, [u8]> {
    let mut v = vec![0u8; len as usize];
    // Safety: the caller's range, as `read_words` requires; `v` is a copy.
    unsafe { read_words(data, at, &mut v) };
    std::borrow::Cow::Owned(v)
}

/// A ring in ordinary heap memory, for tests and benchmarks of the protocol
/// without shared memory. `split` turns it into its two ends, which keep
/// its memory alive (as `rtrb::RingBuffer::new` hands out its ends).
pub struct HeapRing {
    control: Box<RingControl>,
    /// Written through the producer's pointer while both ends share it.
    #[cfg(not(loom))]
    data: Box<[std::cell::UnsafeCell<u64>]>,
    #[cfg(loom)]
    data: Vec<AtomicU64>,
    capacity: u64,
}

// Safety: the buffer is written by the ring's one producer and read by its
// one consumer only, each at positions the protocol of this module gives it.
unsafe impl Send for HeapRing {}
// Safety: the two ends share it through an `Arc`: `control` is atomics, and
// the buffer's cells are accessed only as said above, ordered by `control`.
unsafe impl Sync for HeapRing {}

impl HeapRing {
    pub fn new(capacity: u64) -> HeapRing {
        assert!(capacity.is_power_of_two() && capacity >= 16);
        let control = Box::new(RingControl {
            head: AtomicU64::new(0),
            _pad_head: [0; 120],
            tail: AtomicU64::new(0),
            tail_weight: AtomicU64::new(0),
            _pad_tail: [0; 112],
        });
        #[cfg(not(loom))]
        let data = (0..capacity / 8)
            .map(|_| std::cell::UnsafeCell::new(0))
            .collect();
        #[cfg(loom)]
        let data = (0..capacity / 8).map(|_| AtomicU64::new(0)).collect();
        HeapRing {
            control,
            data,
            capacity,
        }
    }

    /// The control block and the buffer, for tests that look at the
    /// positions or break them, or make a second consumer: pointers, good as
    /// long as one of the ends lives.
    #[cfg(all(test, not(loom)))]
    fn parts(&self) -> (*const RingControl, *const u8) {
        (&*self.control, self.data.as_ptr() as *const u8)
    }

    /// Its two ends, which share the ring's memory and free it with the
    /// last of them.
    pub fn split(self) -> (Producer, Consumer) {
        let ring = Arc::new(self);
        let control: *const RingControl = &*ring.control;
        let data = ring.data.as_ptr() as *mut u8;
        // Safety: the memory lives as long as `ring`, which each end holds;
        // there is one producer and one consumer.
        let (mut p, mut c) = unsafe {
            (
                Producer::new(control, data, ring.capacity),
                Consumer::new(control, data, ring.capacity),
            )
        };
        p._owner = Some(ring.clone());
        c._owner = Some(ring);
        (p, c)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A one-segment message of `words` data words, each word = `tag`.
    fn message(words: u32, tag: u64) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&words.to_le_bytes());
        for _ in 0..words {
            m.extend_from_slice(&tag.to_le_bytes());
        }
        m
    }

    fn drain_tags(c: &mut Consumer) -> Vec<u64> {
        let mut tags = Vec::new();
        c.drain(|m| {
            tags.push(u64::from_le_bytes(m[8..16].try_into().unwrap()));
            Ok::<u64, ()>(1)
        })
        .unwrap();
        tags
    }

    #[test]
    fn empty_ring_drains_nothing() {
        let ring = HeapRing::new(64);
        let (_p, mut c) = ring.split();
        assert_eq!(drain_tags(&mut c), Vec::<u64>::new());
    }

    #[test]
    fn full_ring_refuses_and_keeps_order() {
        let ring = HeapRing::new(64);
        let (mut p, mut c) = ring.split();
        // 16-byte messages: exactly 4 fit.
        for i in 0..4 {
            assert!(p.push(&message(1, i)));
        }
        assert!(!p.push(&message(1, 99)), "a full ring must refuse");
        assert_eq!(drain_tags(&mut c), vec![0, 1, 2, 3]);
        assert!(p.push(&message(1, 4)));
        assert_eq!(drain_tags(&mut c), vec![4]);
    }

    /// A long drain releases space as it goes, not only at its end: the
    /// producer can push again while the consumer is still in `drain`.
    #[test]
    fn a_long_drain_releases_space_as_it_goes() {
        let capacity = 4 * RELEASE_EVERY;
        let ring = HeapRing::new(capacity);
        let (control, _) = ring.parts();
        let (mut p, mut c) = ring.split();
        let msg = message(9, 7); // 80 bytes, as an event record
        let mut pushed = 0u64;
        while p.push(&msg) {
            pushed += 1;
        }
        let mut seen = 0u64;
        let mut released_during = Vec::new();
        c.drain(|_| {
            seen += 1;
            // Safety: `c`, draining, keeps the ring's memory alive.
            released_during.push(unsafe { &*control }.tail.load(Ordering::Relaxed));
            Ok::<u64, ()>(1)
        })
        .unwrap();
        assert_eq!(seen, pushed);
        let last_seen_release = *released_during.last().unwrap();
        assert!(
            last_seen_release >= capacity - RELEASE_EVERY - 80,
            "released {last_seen_release} of {capacity} bytes before the last message"
        );
        assert!(released_during.windows(2).all(|w| w[0] <= w[1]));
        assert!(released_during.iter().all(|&t| t % 80 == 0));
        assert_eq!(c.position(), p.position());
    }

    #[test]
    fn messages_written_in_place_arrive_as_pushed_ones_do() {
        let ring = HeapRing::new(64);
        let (mut p, mut c) = ring.split();
        let in_place = |p: &mut Producer, tag: u64| {
            p.push_in_place(|out: &mut [u8; 24]| out.copy_from_slice(&message(2, tag)))
        };
        assert!(in_place(&mut p, 1));
        assert!(p.push(&message(2, 2)));
        assert!(!in_place(&mut p, 3), "needs 16 bytes padding + 24");
        assert_eq!(drain_tags(&mut c), vec![1, 2]);
        assert!(in_place(&mut p, 3));
        assert_eq!(p.position(), 48 + 16 + 24);
        assert_eq!(drain_tags(&mut c), vec![3]);
    }

    #[test]
    fn wraps_with_a_marker_when_a_message_does_not_fit() {
        let ring = HeapRing::new(64);
        let (mut p, mut c) = ring.split();
        // 24-byte messages: two fill 48 bytes, the third cannot fit in the
        // last 16 and must wrap to offset 0 once space is freed.
        assert!(p.push(&message(2, 1)));
        assert!(p.push(&message(2, 2)));
        assert!(!p.push(&message(2, 3)), "needs 16 bytes padding + 24");
        assert_eq!(drain_tags(&mut c), vec![1, 2]);
        assert!(p.push(&message(2, 3)));
        assert_eq!(p.position(), 48 + 16 + 24);
        assert_eq!(drain_tags(&mut c), vec![3]);
        assert_eq!(c.position(), p.position());
    }

    #[test]
    fn many_wraps_keep_every_message() {
        let ring = HeapRing::new(256);
        let (mut p, mut c) = ring.split();
        let mut seen = Vec::new();
        for i in 0..10_000u64 {
            let words = 1 + (i % 5) as u32;
            while !p.push(&message(words, i)) {
                seen.extend(drain_tags(&mut c));
            }
        }
        seen.extend(drain_tags(&mut c));
        assert_eq!(seen, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn concurrent_producer_and_consumer() {
        let ring = HeapRing::new(1024);
        let (mut p, mut c) = ring.split();
        const N: u64 = 200_000;
        std::thread::scope(|s| {
            s.spawn(move || {
                for i in 0..N {
                    while !p.push(&message(1 + (i % 3) as u32, i)) {
                        std::hint::spin_loop();
                    }
                }
            });
            let mut next = 0;
            while next < N {
                for t in drain_tags(&mut c) {
                    assert_eq!(t, next);
                    next += 1;
                }
            }
        });
    }

    /// The weights `each` returns add up in `tail_weight`, and a new
    /// consumer goes on from there; `peek` shows the next message, past a
    /// wrap marker, without consuming it.
    #[test]
    fn weights_add_up_and_peek_does_not_consume() {
        let ring = HeapRing::new(64);
        let (control, data) = ring.parts();
        let (mut p, mut c) = ring.split();
        assert_eq!(c.peek().unwrap(), None);
        assert!(p.push(&message(2, 1)));
        assert!(p.push(&message(2, 2)));
        assert_eq!(c.drain(|m| Ok::<u64, ()>(m[8] as u64 * 10)).unwrap(), 2);
        assert_eq!(c.weight(), 30);
        // Safety: `p` and `c` keep the ring's memory alive.
        assert_eq!(unsafe { &*control }.tail_weight.load(Ordering::Relaxed), 30);
        // 48 bytes used: the next 24-byte message wraps to offset 0.
        assert!(p.push(&message(2, 3)));
        assert_eq!(c.peek().unwrap(), Some(&message(2, 3)[..]));
        assert_eq!(c.peek().unwrap(), Some(&message(2, 3)[..]));
        // Safety: `p` and `c` keep the memory alive past `again` (dropped
        // first); `again` only peeks and `c` is idle from here, so no two
        // consumers release.
        let again = unsafe { Consumer::new(control, data, 64) };
        assert_eq!(again.weight(), 30);
        assert_eq!(again.peek().unwrap(), Some(&message(2, 3)[..]));
    }

    #[test]
    fn corrupt_positions_are_an_error_not_a_read() {
        let ring = HeapRing::new(64);
        let (control, _) = ring.parts();
        let (_p, mut c) = ring.split();
        // Safety: `_p` and `c` keep the ring's memory alive.
        unsafe { &*control }.head.store(1 << 40, Ordering::Relaxed);
        let err = c.drain(|_| Ok::<u64, ()>(1)).unwrap_err();
        assert!(matches!(
            err,
            DrainError::Ring(RingError::BadPositions { .. })
        ));
    }

    #[test]
    fn corrupt_length_is_an_error_not_a_read() {
        let ring = HeapRing::new(64);
        let (mut p, mut c) = ring.split();
        let mut m = message(1, 7);
        m[4] = 200; // claims 200 words
        assert!(p.push(&m));
        let err = c.drain(|_| Ok::<u64, ()>(1)).unwrap_err();
        assert!(matches!(
            err,
            DrainError::Ring(RingError::BadMessage { .. })
        ));
        assert_eq!(c.position(), 0, "nothing is released past a corrupt record");
    }

    #[test]
    fn message_len_reads_multi_segment_tables() {
        // 2 segments of 1 and 2 words: table = 4 + 8 = 12 -> 16 bytes.
        let mut m = vec![0u8; 16 + 24];
        m[0..4].copy_from_slice(&1u32.to_le_bytes());
        m[4..8].copy_from_slice(&1u32.to_le_bytes());
        m[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(message_len(&m), Ok(40));
        assert!(message_len(&m[..39]).is_err());
        assert!(message_len(&[0xff; 16]).is_err());
    }
}

/// Model-checks the orderings: `RUSTFLAGS="--cfg loom" cargo test -p trace-schema --release ring::loom_tests`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    #[test]
    fn messages_arrive_whole_and_in_order() {
        loom::model(|| {
            let (mut p, mut c) = HeapRing::new(32).split();
            let producer = loom::thread::spawn(move || {
                // 16-byte messages (seg table + 1 word) in a 32-byte ring:
                // the producer must wait for the consumer, and wraps.
                for tag in 1..=3u64 {
                    let mut m = [0u8; 16];
                    m[4..8].copy_from_slice(&1u32.to_le_bytes());
                    m[8..16].copy_from_slice(&tag.to_le_bytes());
                    while !p.push(&m) {
                        loom::thread::yield_now();
                    }
                }
            });
            let mut expected = 1u64;
            while expected <= 3 {
                c.drain(|m| {
                    let tag = u64::from_le_bytes(m[8..16].try_into().unwrap());
                    assert_eq!(tag, expected);
                    expected += 1;
                    Ok::<u64, ()>(1)
                })
                .unwrap();
                loom::thread::yield_now();
            }
            producer.join().unwrap();
        });
    }
}
