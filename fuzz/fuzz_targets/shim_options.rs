//! The shim's `-plugin ...,opt=val` options: any text gives options or an
//! error that names an option, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use trace_schema::options::ShimOptions;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let args: Vec<&str> = text.split(',').collect();
    match ShimOptions::parse(&args) {
        Ok(o) => assert!(o.ring_bytes.is_power_of_two() && o.meta_ring_bytes.is_power_of_two()),
        Err(e) => assert!(!e.message.is_empty()),
    }
});
