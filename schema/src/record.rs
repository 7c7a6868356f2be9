//! The fixed-size event record: a flat, single-segment Cap'n Proto `Event`
//! message (see `events.capnp`), encoded and decoded at fixed byte offsets.
//!
//! The shim's hot path cannot afford a Cap'n Proto builder per access, and the
//! collector's drain cannot afford a message reader per record, so both sides
//! use the offsets below. They are the offsets the Cap'n Proto compiler assigns
//! to `Event`'s fields; the tests at the bottom of this file prove it by
//! round-tripping through the generated builder and reader.

/// Bytes of one event record: segment table (8) + root pointer (8) + data (64).
pub const EVENT_RECORD_BYTES: usize = 80;

/// First word of every event record: the segment table of a one-segment
/// message whose segment is 9 words long (root pointer + 8 data words).
/// Little-endian: `[segment count - 1 = 0 (u32)][segment words = 9 (u32)]`.
pub const EVENT_SEGMENT_TABLE: u64 = 9 << 32;

/// Second word: a struct pointer to the data section that follows at offset 0,
/// with 8 data words and no pointers.
pub const EVENT_ROOT_POINTER: u64 = 8 << 32;

// Byte offsets inside the record (segment table and root pointer included).
const DATA: usize = 16;
const KIND: usize = DATA; // UInt16, enum Kind
const SIZE: usize = DATA + 2; // UInt8
const FLAGS: usize = DATA + 3; // UInt8
const DEVICE: usize = DATA + 4; // UInt16
const VCPU: usize = DATA + 6; // UInt16
const ICOUNT: usize = DATA + 8;
const PC: usize = DATA + 16;
const VADDR: usize = DATA + 24;
const PADDR: usize = DATA + 32;
const VALUE: usize = DATA + 40;
const VALUE_HI: usize = DATA + 48;
const ASID: usize = DATA + 56;

/// `Event.kind`.
pub const KIND_MEM: u16 = 0;
/// `Event.kind`.
pub const KIND_BLOCK: u16 = 1;

/// `Event.flags` bits of a memory access.
pub const FLAG_STORE: u8 = 1 << 0;
pub const FLAG_IO: u8 = 1 << 1;
pub const FLAG_SIGN_EXTENDED: u8 = 1 << 2;
/// The access is big-endian: its bytes in memory are `value`'s in reverse order.
pub const FLAG_BIG_ENDIAN: u8 = 1 << 3;

/// `Event.device` when the access hit no I/O device.
pub const NO_DEVICE: u16 = u16::MAX;

/// One event, decoded. Field meanings are documented in `events.capnp`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u16,
    pub size: u8,
    pub flags: u8,
    pub device: u16,
    pub vcpu: u16,
    pub icount: u64,
    pub pc: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub value: u64,
    pub value_hi: u64,
    pub asid: u64,
}

impl Event {
    pub fn is_store(&self) -> bool {
        self.flags & FLAG_STORE != 0
    }
    pub fn is_io(&self) -> bool {
        self.flags & FLAG_IO != 0
    }

    /// Writes the record into `out`, the whole 80 bytes.
    #[inline(always)]
    pub fn encode(&self, out: &mut [u8; EVENT_RECORD_BYTES]) {
        put(out, 0, EVENT_SEGMENT_TABLE);
        put(out, 8, EVENT_ROOT_POINTER);
        let word0 = self.kind as u64
            | (self.size as u64) << 16
            | (self.flags as u64) << 24
            | (self.device as u64) << 32
            | (self.vcpu as u64) << 48;
        put(out, KIND, word0);
        put(out, ICOUNT, self.icount);
        put(out, PC, self.pc);
        put(out, VADDR, self.vaddr);
        put(out, PADDR, self.paddr);
        put(out, VALUE, self.value);
        put(out, VALUE_HI, self.value_hi);
        put(out, ASID, self.asid);
    }

    /// Reads a record, or `None` when its first two words are not those of an
    /// `Event` record (a corrupt or foreign ring).
    #[inline]
    pub fn decode(rec: &[u8; EVENT_RECORD_BYTES]) -> Option<Event> {
        if get(rec, 0) != EVENT_SEGMENT_TABLE || get(rec, 8) != EVENT_ROOT_POINTER {
            return None;
        }
        Some(Event {
            kind: u16::from_le_bytes([rec[KIND], rec[KIND + 1]]),
            size: rec[SIZE],
            flags: rec[FLAGS],
            device: u16::from_le_bytes([rec[DEVICE], rec[DEVICE + 1]]),
            vcpu: u16::from_le_bytes([rec[VCPU], rec[VCPU + 1]]),
            icount: get(rec, ICOUNT),
            pc: get(rec, PC),
            vaddr: get(rec, VADDR),
            paddr: get(rec, PADDR),
            value: get(rec, VALUE),
            value_hi: get(rec, VALUE_HI),
            asid: get(rec, ASID),
        })
    }
}

#[inline(always)]
fn put(out: &mut [u8; EVENT_RECORD_BYTES], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[inline(always)]
fn get(rec: &[u8; EVENT_RECORD_BYTES], at: usize) -> u64 {
    u64::from_le_bytes(rec[at..at + 8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events_capnp::event;
    use capnp::message::{Builder, ReaderOptions};
    use capnp::serialize;

    fn sample() -> Event {
        Event {
            kind: KIND_MEM,
            size: 16,
            flags: FLAG_STORE | FLAG_IO,
            device: 0x1234,
            vcpu: 3,
            icount: 0x0102_0304_0506_0708,
            pc: 0xdead_beef,
            vaddr: 0xe000_e010,
            paddr: 0x1_e000_e010,
            value: 0x1122_3344_5566_7788,
            value_hi: 0x99aa_bbcc_ddee_ff00,
            asid: 42,
        }
    }

    /// The hand offsets produce exactly the bytes of the generated builder.
    #[test]
    fn encode_matches_capnp_builder() {
        let e = sample();
        let mut msg = Builder::new_default();
        {
            let mut b = msg.init_root::<event::Builder>();
            b.set_kind(event::Kind::Mem);
            b.set_size(e.size);
            b.set_flags(e.flags);
            b.set_device(e.device);
            b.set_vcpu(e.vcpu);
            b.set_icount(e.icount);
            b.set_pc(e.pc);
            b.set_vaddr(e.vaddr);
            b.set_paddr(e.paddr);
            b.set_value(e.value);
            b.set_value_hi(e.value_hi);
            b.set_asid(e.asid);
        }
        let words = serialize::write_message_to_words(&msg);
        let mut ours = [0u8; EVENT_RECORD_BYTES];
        e.encode(&mut ours);
        assert_eq!(words.len(), EVENT_RECORD_BYTES);
        assert_eq!(&words[..], &ours[..]);
    }

    /// The generated reader reads back what the hand encoder wrote.
    #[test]
    fn capnp_reader_reads_hand_encoded_record() {
        let e = Event {
            kind: KIND_BLOCK,
            ..sample()
        };
        let mut rec = [0u8; EVENT_RECORD_BYTES];
        e.encode(&mut rec);
        let msg =
            serialize::read_message_from_flat_slice(&mut &rec[..], ReaderOptions::new()).unwrap();
        let r = msg.get_root::<event::Reader>().unwrap();
        assert_eq!(r.get_kind().unwrap(), event::Kind::Block);
        assert_eq!(r.get_size(), e.size);
        assert_eq!(r.get_flags(), e.flags);
        assert_eq!(r.get_device(), e.device);
        assert_eq!(r.get_vcpu(), e.vcpu);
        assert_eq!(r.get_icount(), e.icount);
        assert_eq!(r.get_pc(), e.pc);
        assert_eq!(r.get_vaddr(), e.vaddr);
        assert_eq!(r.get_paddr(), e.paddr);
        assert_eq!(r.get_value(), e.value);
        assert_eq!(r.get_value_hi(), e.value_hi);
        assert_eq!(r.get_asid(), e.asid);
    }

    #[test]
    fn decode_roundtrips_and_rejects_foreign_words() {
        let e = sample();
        let mut rec = [0u8; EVENT_RECORD_BYTES];
        e.encode(&mut rec);
        assert_eq!(Event::decode(&rec), Some(e));
        rec[4] = 10; // segment of 10 words: not an Event record
        assert_eq!(Event::decode(&rec), None);
    }
}
