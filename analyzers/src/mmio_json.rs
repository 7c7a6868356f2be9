//! PANDA mmio_trace's JSON log from the `mmio` table.
//!
//! ```text
//! [
//! { "type": "R", "guest_pc": "0x0000043e", "phys_addr": "0x...", "virt_addr": "0x...", "size": "0x00000004", "value": "0x...", "device": "systick" },
//! ...
//! { ... }
//! ]
//! ```
//!
//! One object a line in (icount, vcpu) order, every line but the last
//! followed by a comma so the whole output is valid JSON; hex zero-padded
//! to the guest pointer width.

use std::io::Write;

use anyhow::Result;
use polars::prelude::*;

use crate::capture_dir::{Capture, UNKNOWN_DEVICE};
use crate::hex::{hex_pad, hex_pad128};
use crate::stream::{icount_range, sorted_window, window_rows, windows};

/// Writes the JSON log; returns the number of accesses written.
pub fn mmio_json(cap: &Capture, w: &mut dyn Write) -> Result<u64> {
    mmio_json_windowed(cap, w, window_rows())
}

/// [`mmio_json`] reading about `window_rows` accesses at a time.
pub fn mmio_json_windowed(cap: &Capture, w: &mut dyn Write, window_rows: u64) -> Result<u64> {
    cap.require("mmio", "mmio-json")?;
    let cols = [
        col("vcpu").cast(DataType::UInt32),
        col("icount").cast(DataType::UInt64),
        col("pc").cast(DataType::UInt64),
        col("type"),
        col("vaddr").cast(DataType::UInt64),
        col("paddr").cast(DataType::UInt64),
        col("size").cast(DataType::UInt8),
        col("value").cast(DataType::UInt64),
        col("value_hi").cast(DataType::UInt64),
        col("device"),
    ];
    let d = cap.ptr_digits();
    writeln!(w, "[")?;
    let mut n = 0u64;
    // Each object is written once the next one is known, so the last one
    // can go without a comma.
    let mut pending: Option<String> = None;
    let range = icount_range(cap, "mmio", None)?;
    for win in range.map(|r| windows(r, window_rows)).unwrap_or_default() {
        let df = sorted_window(cap, "mmio", win, None, &cols)?;
        let pc = df.column("pc")?.u64()?;
        let ty = df.column("type")?.str()?;
        let vaddr = df.column("vaddr")?.u64()?;
        let paddr = df.column("paddr")?.u64()?;
        let size = df.column("size")?.u8()?;
        let value = df.column("value")?.u64()?;
        let value_hi = df.column("value_hi")?.u64()?;
        let device = df.column("device")?.str()?;
        for i in 0..df.height() {
            let v = value.get(i).unwrap_or(0);
            let value = match value_hi.get(i) {
                Some(hi) => hex_pad128(v, hi, d),
                None => hex_pad(v, d),
            };
            let obj = format!(
                "{{ \"type\": {}, \"guest_pc\": \"0x{}\", \"phys_addr\": \"0x{}\", \
                 \"virt_addr\": \"0x{}\", \"size\": \"0x{}\", \"value\": \"0x{}\", \
                 \"device\": {} }}",
                json_str(ty.get(i).unwrap_or("")),
                hex_pad(pc.get(i).unwrap_or(0), d),
                hex_pad(paddr.get(i).unwrap_or(0), d),
                hex_pad(vaddr.get(i).unwrap_or(0), d),
                hex_pad(u64::from(size.get(i).unwrap_or(0)), d),
                value,
                json_str(device.get(i).unwrap_or(UNKNOWN_DEVICE)),
            );
            if let Some(prev) = pending.replace(obj) {
                writeln!(w, "{prev},")?;
            }
            n += 1;
        }
    }
    if let Some(last) = pending {
        writeln!(w, "{last}")?;
    }
    writeln!(w, "]")?;
    w.flush()?;
    Ok(n)
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}
