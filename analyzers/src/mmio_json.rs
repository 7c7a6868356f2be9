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
//!
//! `phys_addr` is the absolute physical address, or, as PANDA's mmio_trace
//! logs it, the offset into the device's memory region ([`PhysAddr`]): the
//! address QEMU hands the device model, taken from the capture's memory map.

use std::io::Write;

use anyhow::{anyhow, Result};
use polars::prelude::*;
use trace_format::memory_map::MemoryMap;

use crate::capture_dir::{Capture, UNKNOWN_DEVICE};
use crate::hex::{hex_pad, hex_pad128};
use crate::stream::{icount_range, sorted_window, window_rows, windows};

/// What `phys_addr` holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PhysAddr {
    /// The physical address (`paddr`).
    #[default]
    Absolute,
    /// The offset into the memory region at `paddr` in the capture's memory
    /// map (`mtree.txt`), as PANDA's mmio_trace writes it: SysTick's CVR at
    /// 0xe000e018 is 0x8 (QEMU 10 maps `v7m_systick` at 0xe000e010; PANDA's
    /// older QEMU had SysTick inside the NVIC's region and wrote 0x18).
    Offset,
}

/// What [`mmio_json`] wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct MmioJsonReport {
    pub accesses: u64,
    /// With [`PhysAddr::Offset`]: accesses at an address the memory map does
    /// not cover, written with their absolute address.
    pub outside_map: u64,
}

/// Writes the JSON log; returns the number of accesses written.
pub fn mmio_json(cap: &Capture, w: &mut dyn Write) -> Result<u64> {
    Ok(mmio_json_windowed(cap, w, window_rows(), PhysAddr::Absolute)?.accesses)
}

/// [`mmio_json`] with `phys_addr` as asked.
pub fn mmio_json_with(cap: &Capture, w: &mut dyn Write, phys: PhysAddr) -> Result<MmioJsonReport> {
    mmio_json_windowed(cap, w, window_rows(), phys)
}

/// The capture's memory map, for offsets into regions.
fn memory_map(cap: &Capture) -> Result<MemoryMap> {
    cap.memory_map()?.ok_or_else(|| {
        anyhow!(
            "--phys offset needs the capture's memory map, {}, which it does not have \
             (captured by `attach` without --qmp?)",
            cap.dir().join("mtree.txt").display()
        )
    })
}

/// [`mmio_json_with`] reading about `window_rows` accesses at a time.
pub fn mmio_json_windowed(
    cap: &Capture,
    w: &mut dyn Write,
    window_rows: u64,
    phys: PhysAddr,
) -> Result<MmioJsonReport> {
    let mut log = MmioJsonLog::begin(w)?;
    log.capture(cap, phys, None, window_rows)?;
    log.finish()
}

/// One JSON log of the accesses of one capture or many (`trace-query
/// mmio-json --trace 'runs/*'`: each object then starts with `"capture":
/// "run-17"`, the capture's name).
pub struct MmioJsonLog<'w> {
    w: &'w mut dyn Write,
    /// The array's `[` is written.
    begun: bool,
    /// Each object is written once the next one is known, so the last one
    /// can go without a comma.
    pending: Option<String>,
    report: MmioJsonReport,
}

impl<'w> MmioJsonLog<'w> {
    /// A log to `w`; nothing is written until the first capture is found
    /// readable, so that a bad one is an error with no output.
    pub fn begin(w: &'w mut dyn Write) -> Result<MmioJsonLog<'w>> {
        Ok(MmioJsonLog {
            w,
            begun: false,
            pending: None,
            report: MmioJsonReport {
                accesses: 0,
                outside_map: 0,
            },
        })
    }

    /// Whether [`MmioJsonLog::capture`] can read `cap` as asked: call it
    /// for every capture before the first, so that one that cannot be read
    /// is an error before any output.
    pub fn check(cap: &Capture, phys: PhysAddr) -> Result<()> {
        cap.require("mmio", "mmio-json")?;
        if phys == PhysAddr::Offset {
            memory_map(cap)?;
        }
        Ok(())
    }

    /// Appends the accesses of `cap`, each with `"capture": name` when
    /// given, reading about `window_rows` accesses at a time.
    pub fn capture(
        &mut self,
        cap: &Capture,
        phys: PhysAddr,
        name: Option<&str>,
        window_rows: u64,
    ) -> Result<()> {
        cap.require("mmio", "mmio-json")?;
        let map = match phys {
            PhysAddr::Absolute => None,
            PhysAddr::Offset => Some(memory_map(cap)?),
        };
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
        if !std::mem::replace(&mut self.begun, true) {
            writeln!(self.w, "[")?;
        }
        let d = cap.ptr_digits();
        let capture_key = name.map(|n| format!("\"capture\": {}, ", json_str(n)));
        let capture_key = capture_key.as_deref().unwrap_or("");
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
                let mut phys_addr = paddr.get(i).unwrap_or(0);
                if let Some(map) = &map {
                    match map.region(phys_addr) {
                        Some(r) => phys_addr = r.offset_of(phys_addr),
                        None => self.report.outside_map += 1,
                    }
                }
                let v = value.get(i).unwrap_or(0);
                let value = match value_hi.get(i) {
                    Some(hi) => hex_pad128(v, hi, d),
                    None => hex_pad(v, d),
                };
                let obj = format!(
                    "{{ {capture_key}\"type\": {}, \"guest_pc\": \"0x{}\", \"phys_addr\": \"0x{}\", \
                     \"virt_addr\": \"0x{}\", \"size\": \"0x{}\", \"value\": \"0x{}\", \
                     \"device\": {} }}",
                    json_str(ty.get(i).unwrap_or("")),
                    hex_pad(pc.get(i).unwrap_or(0), d),
                    hex_pad(phys_addr, d),
                    hex_pad(vaddr.get(i).unwrap_or(0), d),
                    hex_pad(u64::from(size.get(i).unwrap_or(0)), d),
                    value,
                    json_str(device.get(i).unwrap_or(UNKNOWN_DEVICE)),
                );
                if let Some(prev) = self.pending.replace(obj) {
                    writeln!(self.w, "{prev},")?;
                }
                self.report.accesses += 1;
            }
        }
        Ok(())
    }

    /// Closes the array; returns what was written.
    pub fn finish(self) -> Result<MmioJsonReport> {
        if !self.begun {
            writeln!(self.w, "[")?;
        }
        if let Some(last) = self.pending {
            writeln!(self.w, "{last}")?;
        }
        writeln!(self.w, "]")?;
        self.w.flush()?;
        Ok(self.report)
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}
