//! The event ring's messages: `Chunk`s of fixed-size records (see
//! `events.capnp`), built by the shim at fixed offsets and read by the
//! collector the same way. Both sides are here.
//!
//! The shim cannot afford a Cap'n Proto builder per event, nor the
//! collector a message reader per record, so both use the word offsets
//! below: the ones the Cap'n Proto compiler gives `Chunk`, `MemAccess` and
//! `BlockRun`. The tests at the bottom prove it by reading what
//! [`ChunkBuffer`] builds with the generated reader, and building with the
//! generated builder what [`parse`] reads.
//!
//! A chunk is one flat single-segment message, at most [`CHUNK_BYTES`]:
//!
//! ```text
//! word 0      segment table: 1 segment of (total words - 1) words
//! word 1      root pointer: a struct of 4 data words and 2 pointers
//! words 2..5  Chunk's data: firstIndex, icount, asid, vcpu
//! word 6      accesses: a list pointer to word 8, or null
//! word 7      blocks: a list pointer to word 8, or null
//! word 8      the list's tag: the record count, each record's data words
//! words 9..   the records: MemAccess (5 words) or BlockRun (1 word)
//! ```
//!
//! A chunk holds one kind of record, so the shim keeps one chunk of each
//! kind open per vCPU and publishes it whole when it is full (or when asked,
//! see `layout::Header::flush_epoch`): one copy into the ring and one
//! release store per chunk, not per event.

/// Largest chunk message, in bytes.
pub const CHUNK_BYTES: usize = 4096;
const CHUNK_WORDS: usize = CHUNK_BYTES / 8;
/// Words before the first record.
pub const HEADER_WORDS: usize = 9;
/// Words of one `MemAccess` record.
pub const MEM_ACCESS_WORDS: usize = 5;
/// Words of one `BlockRun` record.
pub const BLOCK_RUN_WORDS: usize = 1;
/// Most `MemAccess` records in a chunk.
pub const MAX_ACCESSES: usize = (CHUNK_WORDS - HEADER_WORDS) / MEM_ACCESS_WORDS;
/// Most `BlockRun` records in a chunk.
pub const MAX_BLOCKS: usize = (CHUNK_WORDS - HEADER_WORDS) / BLOCK_RUN_WORDS;

/// The root pointer: a struct right after it, of 4 data words and 2 pointers.
const ROOT_POINTER: u64 = 4 << 32 | 2 << 48;
/// Word index of the accesses pointer (the blocks one follows).
const ACCESSES_POINTER: usize = 6;
const BLOCKS_POINTER: usize = 7;
const TAG: usize = 8;

/// `MemAccess.flags` bits.
pub const FLAG_STORE: u8 = 1 << 0;
pub const FLAG_IO: u8 = 1 << 1;
pub const FLAG_SIGN_EXTENDED: u8 = 1 << 2;
/// The access is big-endian: its bytes in memory are `value`'s in reverse order.
pub const FLAG_BIG_ENDIAN: u8 = 1 << 3;
/// This record is the upper 8 bytes of the 16-byte access before it.
pub const FLAG_HIGH_HALF: u8 = 1 << 4;

/// `MemAccess.device` of an access that hit no named I/O device.
pub const NO_DEVICE: u16 = u16::MAX;

/// Bits of a block id (`BlockRun.block`, `Meta.block.id`) that hold its
/// instruction count - 1: the collector knows every block's length from
/// its id alone, even when its description was lost.
pub const BLOCK_LENGTH_BITS: u32 = 10;
/// Most instructions a block id can describe (QEMU's TCG_MAX_INSNS is 512).
pub const MAX_BLOCK_INSNS: u64 = 1 << BLOCK_LENGTH_BITS;

/// The id of translated block number `sequence`, of `insns` instructions
/// (1..=`MAX_BLOCK_INSNS`).
pub fn block_id(sequence: u64, insns: u64) -> u64 {
    debug_assert!((1..=MAX_BLOCK_INSNS).contains(&insns));
    sequence << BLOCK_LENGTH_BITS | (insns - 1)
}

/// The instruction count of block `id`.
pub fn block_insns(id: u64) -> u64 {
    (id & (MAX_BLOCK_INSNS - 1)) + 1
}

/// One memory access record, decoded. Field meanings are in `events.capnp`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemAccess {
    pub pc: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub value: u64,
    pub icount_delta: u32,
    pub size: u8,
    pub flags: u8,
    pub device: u16,
}

impl MemAccess {
    #[inline(always)]
    fn words(&self) -> [u64; MEM_ACCESS_WORDS] {
        [
            self.pc,
            self.vaddr,
            self.paddr,
            self.value,
            self.icount_delta as u64
                | (self.size as u64) << 32
                | (self.flags as u64) << 40
                | (self.device as u64) << 48,
        ]
    }

    /// Reads a record from its 40 bytes.
    #[inline(always)]
    pub fn read(rec: &[u8]) -> MemAccess {
        let w = |i: usize| u64::from_le_bytes(rec[8 * i..8 * i + 8].try_into().unwrap());
        let last = w(4);
        MemAccess {
            pc: w(0),
            vaddr: w(1),
            paddr: w(2),
            value: w(3),
            icount_delta: last as u32,
            size: (last >> 32) as u8,
            flags: (last >> 40) as u8,
            device: (last >> 48) as u16,
        }
    }

    pub fn is_store(&self) -> bool {
        self.flags & FLAG_STORE != 0
    }
    pub fn is_io(&self) -> bool {
        self.flags & FLAG_IO != 0
    }
    pub fn is_high_half(&self) -> bool {
        self.flags & FLAG_HIGH_HALF != 0
    }
}

/// A chunk being filled: the shim's per-vCPU, per-kind buffer, laid out as
/// the message it becomes (the header words are written by `seal`).
#[repr(C, align(64))]
pub struct ChunkBuffer {
    words: [u64; CHUNK_WORDS],
    /// Words per record: `MEM_ACCESS_WORDS` or `BLOCK_RUN_WORDS`.
    record_words: usize,
    /// Records in the buffer.
    records: usize,
    /// Events in the buffer (a 16-byte access is two records, one event).
    events: u64,
    /// Records the buffer holds at most.
    capacity: usize,
}

impl ChunkBuffer {
    /// An empty chunk of `MemAccess` records.
    pub fn accesses() -> Box<ChunkBuffer> {
        ChunkBuffer::new(MEM_ACCESS_WORDS, MAX_ACCESSES)
    }

    /// An empty chunk of `BlockRun` records.
    pub fn blocks() -> Box<ChunkBuffer> {
        ChunkBuffer::new(BLOCK_RUN_WORDS, MAX_BLOCKS)
    }

    fn new(record_words: usize, capacity: usize) -> Box<ChunkBuffer> {
        Box::new(ChunkBuffer {
            words: [0; CHUNK_WORDS],
            record_words,
            records: 0,
            events: 0,
            capacity,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Records that still fit.
    #[inline(always)]
    pub fn room(&self) -> usize {
        self.capacity - self.records
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// The chunk's `icount` (set by `start`).
    #[inline(always)]
    pub fn icount(&self) -> u64 {
        self.words[3]
    }

    /// The chunk's `asid` (set by `start`).
    #[inline(always)]
    pub fn asid(&self) -> u64 {
        self.words[4]
    }

    /// Begins an empty chunk whose records count from `icount` and whose
    /// accesses are in address space `asid`.
    #[inline(always)]
    pub fn start(&mut self, icount: u64, asid: u64) {
        debug_assert!(self.is_empty());
        self.words[3] = icount;
        self.words[4] = asid;
    }

    /// Appends one access record (there must be `room`); `event` is false
    /// for the high half of a 16-byte access.
    #[inline(always)]
    pub fn push_access(&mut self, a: &MemAccess, event: bool) {
        debug_assert_eq!(self.record_words, MEM_ACCESS_WORDS);
        let at = HEADER_WORDS + self.records * MEM_ACCESS_WORDS;
        self.words[at..at + MEM_ACCESS_WORDS].copy_from_slice(&a.words());
        self.records += 1;
        self.events += event as u64;
    }

    /// Appends one block record (there must be `room`).
    #[inline(always)]
    pub fn push_block(&mut self, block: u64) {
        debug_assert_eq!(self.record_words, BLOCK_RUN_WORDS);
        self.words[HEADER_WORDS + self.records] = block;
        self.records += 1;
        self.events += 1;
    }

    /// Completes the message for vCPU `vcpu`, `first_index` events of
    /// which were published before it, and returns its bytes. `clear`
    /// empties the buffer afterwards.
    pub fn seal(&mut self, vcpu: u16, first_index: u64) -> &[u8] {
        let list_words = (self.records * self.record_words) as u64;
        let total = HEADER_WORDS + list_words as usize;
        self.words[0] = ((total - 1) as u64) << 32;
        self.words[1] = ROOT_POINTER;
        self.words[2] = first_index;
        self.words[5] = vcpu as u64;
        let (used, null) = if self.record_words == MEM_ACCESS_WORDS {
            (ACCESSES_POINTER, BLOCKS_POINTER)
        } else {
            (BLOCKS_POINTER, ACCESSES_POINTER)
        };
        self.words[used] = list_pointer(used, list_words);
        self.words[null] = 0;
        self.words[TAG] = (self.records as u64) << 2 | (self.record_words as u64) << 32;
        let bytes = total * 8;
        // Safety: the words are plain u64s; the bytes are their memory,
        // little-endian on every host QEMU's plugins run on (below).
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, bytes) }
    }

    /// Empties the buffer (after `seal`, or to drop its records).
    pub fn clear(&mut self) {
        self.records = 0;
        self.events = 0;
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!("chunks are built in native byte order, which must be little-endian");

/// A composite list pointer at word `at` to the tag at word `TAG`, of
/// `words` words of elements.
fn list_pointer(at: usize, words: u64) -> u64 {
    let offset = (TAG - at - 1) as u64;
    1 | offset << 2 | 7 << 32 | words << 35
}

/// A chunk's header fields (`events.capnp`'s `Chunk`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub first_index: u64,
    pub icount: u64,
    pub asid: u64,
    pub vcpu: u16,
}

/// A chunk message, checked: its records are in place in the message.
#[derive(Clone, Copy, Debug)]
pub enum Chunk<'a> {
    /// `MemAccess` records, `MEM_ACCESS_WORDS * 8` bytes each.
    Accesses(ChunkHeader, &'a [u8]),
    /// `BlockRun` records, 8 bytes each.
    Blocks(ChunkHeader, &'a [u8]),
}

impl<'a> Chunk<'a> {
    pub fn header(&self) -> &ChunkHeader {
        match self {
            Chunk::Accesses(h, _) | Chunk::Blocks(h, _) => h,
        }
    }

    /// The records, in place in the message.
    pub fn records(&self) -> &'a [u8] {
        match self {
            Chunk::Accesses(_, r) | Chunk::Blocks(_, r) => r,
        }
    }

    /// The accesses of an `Accesses` chunk, decoded.
    pub fn accesses(&self) -> impl Iterator<Item = MemAccess> + 'a {
        let records: &'a [u8] = match self {
            Chunk::Accesses(_, r) => r,
            Chunk::Blocks(..) => &[],
        };
        records
            .chunks_exact(MEM_ACCESS_WORDS * 8)
            .map(MemAccess::read)
    }

    /// The block ids of a `Blocks` chunk.
    pub fn blocks(&self) -> impl Iterator<Item = u64> + 'a {
        let records: &'a [u8] = match self {
            Chunk::Blocks(_, r) => r,
            Chunk::Accesses(..) => &[],
        };
        records
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
    }
}

/// Reads the chunk message `msg` (a whole message of the ring, as
/// `ring::message_len` delimits it), or says why it is not one: every word
/// the offsets above rely on is checked, never trusted.
pub fn parse(msg: &[u8]) -> Result<Chunk<'_>, &'static str> {
    if !msg.len().is_multiple_of(8) || msg.len() < HEADER_WORDS * 8 {
        return Err("shorter than a chunk's header");
    }
    if msg.len() > CHUNK_BYTES {
        return Err("longer than a chunk");
    }
    let w = |i: usize| u64::from_le_bytes(msg[8 * i..8 * i + 8].try_into().unwrap());
    let words = msg.len() / 8;
    if w(0) != ((words - 1) as u64) << 32 {
        return Err("not a one-segment message of its length");
    }
    if w(1) != ROOT_POINTER {
        return Err("not a Chunk (its root is not a struct of 4 data words and 2 pointers)");
    }
    let tag = w(TAG);
    let records = (tag >> 2 & 0x3fff_ffff) as usize;
    let record_words = (tag >> 32 & 0xffff) as usize;
    if tag & 3 != 0 || tag >> 48 != 0 {
        return Err("its list's tag is not that of a list of pointer-less structs");
    }
    let (used, null, kind_words) = match (w(ACCESSES_POINTER), w(BLOCKS_POINTER)) {
        (p, 0) if p != 0 => (ACCESSES_POINTER, BLOCKS_POINTER, MEM_ACCESS_WORDS),
        (0, p) if p != 0 => (BLOCKS_POINTER, ACCESSES_POINTER, BLOCK_RUN_WORDS),
        _ => return Err("not exactly one of its two lists is set"),
    };
    debug_assert_eq!(w(null), 0);
    if record_words != kind_words {
        return Err("its records are not of their kind's size");
    }
    let list_words = records * record_words;
    if HEADER_WORDS + list_words != words {
        return Err("its record count does not match its length");
    }
    if w(used) != list_pointer(used, list_words as u64) {
        return Err("its list pointer is not the one its tag implies");
    }
    let header = ChunkHeader {
        first_index: w(2),
        icount: w(3),
        asid: w(4),
        vcpu: w(5) as u16,
    };
    let records = &msg[HEADER_WORDS * 8..];
    Ok(if used == ACCESSES_POINTER {
        Chunk::Accesses(header, records)
    } else {
        Chunk::Blocks(header, records)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events_capnp::chunk;
    use capnp::message::{Builder, ReaderOptions};
    use capnp::serialize;

    fn sample(i: u32) -> MemAccess {
        MemAccess {
            pc: 0xdead_beef + i as u64,
            vaddr: 0xe000_e010,
            paddr: 0x1_e000_e010,
            value: 0x1122_3344_5566_7788,
            icount_delta: 0x0102_0304 + i,
            size: 16,
            flags: FLAG_STORE | FLAG_IO,
            device: 0x1234,
        }
    }

    /// What the shim builds, the generated reader reads.
    #[test]
    fn capnp_reads_what_the_buffer_builds() {
        let mut c = ChunkBuffer::accesses();
        c.start(1000, 42);
        for i in 0..3 {
            c.push_access(&sample(i), i != 2);
        }
        let bytes = c.seal(7, 99).to_vec();
        assert_eq!(bytes.len(), (HEADER_WORDS + 3 * MEM_ACCESS_WORDS) * 8);
        let msg =
            serialize::read_message_from_flat_slice(&mut &bytes[..], ReaderOptions::new()).unwrap();
        let r = msg.get_root::<chunk::Reader>().unwrap();
        assert_eq!(r.get_first_index(), 99);
        assert_eq!(r.get_icount(), 1000);
        assert_eq!(r.get_asid(), 42);
        assert_eq!(r.get_vcpu(), 7);
        assert!(!r.has_blocks());
        let list = r.get_accesses().unwrap();
        assert_eq!(list.len(), 3);
        for (i, a) in list.iter().enumerate() {
            let e = sample(i as u32);
            assert_eq!(a.get_pc(), e.pc);
            assert_eq!(a.get_vaddr(), e.vaddr);
            assert_eq!(a.get_paddr(), e.paddr);
            assert_eq!(a.get_value(), e.value);
            assert_eq!(a.get_icount_delta(), e.icount_delta);
            assert_eq!(a.get_size(), e.size);
            assert_eq!(a.get_flags(), e.flags);
            assert_eq!(a.get_device(), e.device);
        }
        assert_eq!(c.events(), 2);

        let mut b = ChunkBuffer::blocks();
        b.start(5, 0);
        b.push_block(block_id(3, 10));
        b.push_block(block_id(4, 512));
        let bytes = b.seal(1, 7).to_vec();
        let msg =
            serialize::read_message_from_flat_slice(&mut &bytes[..], ReaderOptions::new()).unwrap();
        let r = msg.get_root::<chunk::Reader>().unwrap();
        assert!(!r.has_accesses());
        let ids: Vec<u64> = r
            .get_blocks()
            .unwrap()
            .iter()
            .map(|b| b.get_block())
            .collect();
        assert_eq!(ids, vec![block_id(3, 10), block_id(4, 512)]);
        assert_eq!(
            ids.iter().map(|&i| block_insns(i)).collect::<Vec<_>>(),
            [10, 512]
        );
    }

    /// What the generated builder builds, `parse` reads, word for word as
    /// the buffer builds it.
    #[test]
    fn parse_reads_what_capnp_builds() {
        let mut msg = Builder::new_default();
        {
            let mut r = msg.init_root::<chunk::Builder>();
            r.set_first_index(99);
            r.set_icount(1000);
            r.set_asid(42);
            r.set_vcpu(7);
            let mut list = r.init_accesses(2);
            for i in 0..2 {
                let e = sample(i);
                let mut a = list.reborrow().get(i);
                a.set_pc(e.pc);
                a.set_vaddr(e.vaddr);
                a.set_paddr(e.paddr);
                a.set_value(e.value);
                a.set_icount_delta(e.icount_delta);
                a.set_size(e.size);
                a.set_flags(e.flags);
                a.set_device(e.device);
            }
        }
        let words = serialize::write_message_to_words(&msg);
        let c = parse(&words).unwrap();
        assert_eq!(
            *c.header(),
            ChunkHeader {
                first_index: 99,
                icount: 1000,
                asid: 42,
                vcpu: 7
            }
        );
        assert_eq!(c.accesses().collect::<Vec<_>>(), vec![sample(0), sample(1)]);
        let mut ours = ChunkBuffer::accesses();
        ours.start(1000, 42);
        ours.push_access(&sample(0), true);
        ours.push_access(&sample(1), true);
        assert_eq!(ours.seal(7, 99), &words[..]);
    }

    #[test]
    fn a_full_buffer_is_at_most_a_chunk() {
        let mut c = ChunkBuffer::accesses();
        c.start(0, 0);
        while c.room() > 0 {
            c.push_access(&sample(0), true);
        }
        assert!(c.seal(0, 0).len() <= CHUNK_BYTES);
        let mut b = ChunkBuffer::blocks();
        b.start(0, 0);
        while b.room() > 0 {
            b.push_block(block_id(1, 1));
        }
        let bytes = b.seal(0, 0).to_vec();
        assert!(bytes.len() <= CHUNK_BYTES);
        assert_eq!(parse(&bytes).unwrap().blocks().count(), MAX_BLOCKS);
    }

    /// Any word changed in a chunk's header is refused, or read as the
    /// value it holds: never a read beyond the message.
    #[test]
    fn hostile_headers_are_refused() {
        let mut c = ChunkBuffer::accesses();
        c.start(1, 2);
        c.push_access(&sample(0), true);
        let good = c.seal(3, 4).to_vec();
        assert!(parse(&good).is_ok());
        let breaks: Vec<(usize, u64, &str)> = vec![
            (0, 1, "one-segment"),
            (0, 99 << 32, "one-segment"),
            (1, 0, "not a Chunk"),
            (6, 0, "exactly one"),
            (7, 1 | 7 << 32, "exactly one"),
            (6, list_pointer(6, 6), "list pointer"),
            (8, 2 << 2 | 5 << 32, "record count"),
            (8, 1 << 2 | 4 << 32, "kind's size"),
            (8, 1 << 2 | 5 << 32 | 1 << 48, "tag"),
        ];
        for (word, value, why) in breaks {
            let mut bad = good.clone();
            bad[8 * word..8 * word + 8].copy_from_slice(&value.to_le_bytes());
            let e = parse(&bad).unwrap_err();
            assert!(e.contains(why), "word {word}: {e}");
        }
        assert!(parse(&good[..64]).is_err());
        assert!(parse(&good[..good.len() - 4]).is_err());
    }
}
