//! A hostile or stale segment: any bytes where the header should be must be
//! refused or validated into a geometry that fits the mapping, never read
//! out of bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use trace_schema::layout::{Header, HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    // A header-sized, 8-aligned buffer holding the fuzzer's bytes.
    let mut words = vec![0u64; HEADER_BYTES / 8];
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, HEADER_BYTES) };
    let n = data.len().min(HEADER_BYTES);
    bytes[..n].copy_from_slice(&data[..n]);
    // The mapped length the collector would pass: taken from the input too.
    let mapped = data.get(HEADER_BYTES..HEADER_BYTES + 8).map_or(HEADER_BYTES as u64, |b| {
        u64::from_le_bytes(b.try_into().unwrap())
    });
    let header = unsafe { &*(words.as_ptr() as *const Header) };
    if let Ok(g) = header.validate(mapped) {
        // A geometry that validated must describe exactly the mapping.
        assert_eq!(g.segment_bytes(), Some(mapped));
        let _ = header.options();
    }
});
