//! A ring whose bytes and positions are the producer's to choose: draining
//! it must give messages inside the buffer or an error, never a panic or an
//! out-of-bounds read; reading a message as a chunk (and its records) must
//! give the chunk or say why it is not one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use trace_schema::chunk::{self, Chunk};
use trace_schema::commit::index_at_tail;
use trace_schema::ring::{message_len, Consumer, RingControl};
use trace_schema::sync::Ordering;

const CAPACITY: usize = 8192;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let head = u64::from_le_bytes(data[0..8].try_into().unwrap());
    let tail = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let mut buffer = vec![0u64; CAPACITY / 8];
    let bytes = unsafe { std::slice::from_raw_parts_mut(buffer.as_mut_ptr() as *mut u8, CAPACITY) };
    let n = (data.len() - 16).min(CAPACITY);
    bytes[..n].copy_from_slice(&data[16..16 + n]);
    // A zeroed control block is a valid RingControl (two zero positions).
    let control: Box<RingControl> = unsafe { Box::new(std::mem::zeroed()) };
    control.head.store(head, Ordering::Relaxed);
    control.tail.store(tail, Ordering::Relaxed);
    let mut consumer = unsafe { Consumer::new(&*control, buffer.as_ptr() as *const u8, CAPACITY as u64) };
    let _ = index_at_tail(&mut consumer);
    let _ = consumer.drain(|m| {
        assert!(m.len() <= CAPACITY);
        assert_eq!(message_len(m), Ok(m.len()));
        let mut events = 0u64;
        if let Ok(c) = chunk::parse(m) {
            assert!(m.len() <= chunk::CHUNK_BYTES);
            match c {
                Chunk::Accesses(..) => {
                    for a in c.accesses() {
                        events += !a.is_high_half() as u64;
                    }
                }
                Chunk::Blocks(..) => {
                    for id in c.blocks() {
                        assert!((1..=chunk::MAX_BLOCK_INSNS).contains(&chunk::block_insns(id)));
                        events += 1;
                    }
                }
            }
        }
        Ok::<u64, ()>(events)
    });
});
