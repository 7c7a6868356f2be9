//! Rows of `mem` or `mmio`: how the drain gathers memory accesses, and how
//! a full batch becomes a part's columns.
//!
//! The drain writes each access's five 8-byte fields and one byte of its
//! kind, nothing more: what a chunk's accesses share (the vCPU, the address
//! space) is kept once per run of rows, and what few rows have (the upper
//! half of a 16-byte value, an I/O device) beside the rows that have it.
//! Every byte written here is read again by an encoder thread on another
//! core, so fewer bytes per row is less time on both sides; and the columns
//! made of runs are encoded one step per run.

use anyhow::Result;
use polars::prelude::PlHashMap;
use polars_arrow::datatypes::ArrowDataType;
use trace_schema::chunk::{MemAccess, FLAG_HIGH_HALF, FLAG_IO, FLAG_STORE, MEM_ACCESS_WORDS};

use crate::write::encodings::Bitmap;
use crate::write::parquet_part::{PartBuilder, U64Layout, LEVEL, VALUE_LEVEL};
use crate::write::tables::DeviceNames;

/// A device index of an I/O access that hit no named device.
pub const NO_DEVICE: u32 = u32::MAX;

/// `AccessBatch::kind`: bit 0 store, bit 1 I/O, bits 2.. the size in bytes.
const KIND_STORE: u8 = 1;
const KIND_IO: u8 = 2;
const KIND_SIZE_SHIFT: u32 = 2;

/// Rows from `from` up to the next run's were made by `vcpu` in `asid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub from: u32,
    pub vcpu: u32,
    pub asid: u64,
}

/// Rows of `mem` or `mmio`.
#[derive(Default, Debug)]
pub struct AccessBatch {
    pub icount: Vec<u64>,
    pub pc: Vec<u64>,
    pub vaddr: Vec<u64>,
    pub paddr: Vec<u64>,
    pub value: Vec<u64>,
    /// Per row: `KIND_STORE`, `KIND_IO` and the size.
    pub kind: Vec<u8>,
    pub runs: Vec<Run>,
    /// (row, upper 8 bytes of the value) of each 16-byte access.
    pub wide: Vec<(u32, u64)>,
    /// (row, index in the capture's device list, or `NO_DEVICE`) of each
    /// I/O access.
    pub devices: Vec<(u32, u32)>,
}

impl AccessBatch {
    pub fn with_capacity(n: usize) -> AccessBatch {
        AccessBatch {
            icount: Vec::with_capacity(n),
            pc: Vec::with_capacity(n),
            vaddr: Vec::with_capacity(n),
            paddr: Vec::with_capacity(n),
            value: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.icount.len()
    }

    /// The rows pushed from now on are made by `vcpu` in `asid` (called
    /// once per chunk).
    #[inline]
    pub fn start_run(&mut self, vcpu: u32, asid: u64) {
        let from = self.len() as u32;
        match self.runs.last_mut() {
            Some(r) if r.vcpu == vcpu && r.asid == asid => {}
            // A run that got no rows is replaced.
            Some(r) if r.from == from => *r = Run { from, vcpu, asid },
            _ => self.runs.push(Run { from, vcpu, asid }),
        }
    }

    /// Adds the row of access `a` (of the current run), made at `icount`;
    /// `high` is the upper half of a 16-byte access's value, `device` an I/O
    /// access's device.
    #[inline]
    pub fn push(&mut self, icount: u64, a: &MemAccess, high: u64, device: u32) {
        let row = self.len() as u32;
        self.icount.push(icount);
        self.pc.push(a.pc);
        self.vaddr.push(a.vaddr);
        self.paddr.push(a.paddr);
        self.value.push(a.value);
        let io = a.is_io();
        self.kind.push(
            (a.is_store() as u8 * KIND_STORE) | (io as u8 * KIND_IO) | a.size << KIND_SIZE_SHIFT,
        );
        if a.size > 8 {
            self.wide.push((row, high));
        }
        if io {
            self.devices.push((row, device));
        }
    }

    /// Adds a row per access of a chunk's `records` (`MemAccess` records,
    /// each 16-byte access followed by its high half), made from icount
    /// `base` on, all of the current run. An I/O row's device is added as
    /// the shim's id (`MemAccess::device`), for the caller to resolve in
    /// `devices[before..]`. Returns the number of rows (events), or why the
    /// records are not well formed (then the rows added so far are kept).
    ///
    /// The drain's hot loop: the six vectors have room reserved for the
    /// chunk first, and each row is written without a capacity check per
    /// value (`Vec::push` checked each, a fifth of the drain's time).
    pub fn push_chunk(&mut self, base: u64, records: &[u8]) -> Result<u64, &'static str> {
        const BYTES: usize = MEM_ACCESS_WORDS * 8;
        let n = records.len() / BYTES;
        self.icount.reserve(n);
        self.pc.reserve(n);
        self.vaddr.reserve(n);
        self.paddr.reserve(n);
        self.value.reserve(n);
        self.kind.reserve(n);
        let first = self.len();
        let mut row = first;
        let mut k = 0;
        let word = |r: &[u8], i: usize| u64::from_le_bytes(r[8 * i..8 * i + 8].try_into().unwrap());
        let result = loop {
            let Some(r) = records.get(k * BYTES..(k + 1) * BYTES) else {
                break Ok((row - first) as u64);
            };
            let last = word(r, 4);
            let (size, flags) = ((last >> 32) as u8, (last >> 40) as u8);
            if flags & FLAG_HIGH_HALF != 0 {
                break Err("the high half of a 16-byte access follows no low half");
            }
            if size > 8 {
                match records.get((k + 1) * BYTES..(k + 2) * BYTES) {
                    Some(h) if (word(h, 4) >> 40) as u8 & FLAG_HIGH_HALF != 0 => {
                        self.wide.push((row as u32, word(h, 3)));
                        k += 1;
                    }
                    _ => break Err("a 16-byte access without its high half"),
                }
            }
            if flags & FLAG_IO != 0 {
                self.devices.push((row as u32, (last >> 48) as u32));
            }
            let kind = ((flags & FLAG_STORE != 0) as u8 * KIND_STORE)
                | ((flags & FLAG_IO != 0) as u8 * KIND_IO)
                | size << KIND_SIZE_SHIFT;
            // Safety: `row` is below `first + n`, for which each vector
            // reserved room above; `set_len` below covers exactly the rows
            // written.
            unsafe {
                self.icount
                    .as_mut_ptr()
                    .add(row)
                    .write(base.wrapping_add(last as u32 as u64));
                self.pc.as_mut_ptr().add(row).write(word(r, 0));
                self.vaddr.as_mut_ptr().add(row).write(word(r, 1));
                self.paddr.as_mut_ptr().add(row).write(word(r, 2));
                self.value.as_mut_ptr().add(row).write(word(r, 3));
                self.kind.as_mut_ptr().add(row).write(kind);
            }
            row += 1;
            k += 1;
        };
        // Safety: rows `first..row` were written above, within the room
        // reserved.
        unsafe {
            self.icount.set_len(row);
            self.pc.set_len(row);
            self.vaddr.set_len(row);
            self.paddr.set_len(row);
            self.value.set_len(row);
            self.kind.set_len(row);
        }
        result
    }

    /// Adds a copy of row `row` of `from` (its upper value half included),
    /// with `device`.
    pub fn push_row_of(&mut self, from: &AccessBatch, row: usize, device: u32) {
        let new = self.len() as u32;
        self.icount.push(from.icount[row]);
        self.pc.push(from.pc[row]);
        self.vaddr.push(from.vaddr[row]);
        self.paddr.push(from.paddr[row]);
        self.value.push(from.value[row]);
        self.kind.push(from.kind[row]);
        if from.kind[row] >> KIND_SIZE_SHIFT > 8 {
            if let Ok(at) = from.wide.binary_search_by_key(&(row as u32), |w| w.0) {
                self.wide.push((new, from.wide[at].1));
            }
        }
        if from.kind[row] & KIND_IO != 0 {
            self.devices.push((new, device));
        }
    }

    /// `(value, rows)` of each run of a column made of runs.
    fn runs_of(&self, value: impl Fn(&Run) -> u64) -> Vec<(u64, u64)> {
        let n = self.len() as u64;
        self.runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let to = self.runs.get(i + 1).map_or(n, |next| next.from as u64);
                (value(r), to - r.from as u64)
            })
            .collect()
    }

    /// Adds the columns of the `mem` table (`mmio == false`) or the `mmio`
    /// table to `part`. Its String columns are written as dictionaries of
    /// the batch's codes: `type` from the store bit, `plugin_device` from
    /// the device index, `device` and `region` resolved once per distinct
    /// (device, address) rather than per row.
    pub fn write_columns(
        self,
        mmio: bool,
        devices: &[String],
        names: &dyn DeviceNames,
        part: &mut PartBuilder,
    ) -> Result<()> {
        let named = |d: u32| (d as usize) < devices.len();
        let mut device_names = Interner::default();
        let mut region_names = Interner::default();
        let mut resolved: PlHashMap<(u32, u64), (u32, Option<u32>)> = PlHashMap::default();
        let mut device_keys = Vec::with_capacity(self.devices.len());
        let mut region_keys = Vec::new();
        let mut plugin_keys = Vec::new();
        for &(row, d) in self.devices.iter().filter(|&&(_, d)| named(d)) {
            let paddr = self.paddr[row as usize];
            let (dev, reg) = *resolved.entry((d, paddr)).or_insert_with(|| {
                let (dev, reg) = names.resolve(paddr, &devices[d as usize]);
                (device_names.key(&dev), reg.map(|r| region_names.key(&r)))
            });
            device_keys.push((row, dev));
            if let Some(reg) = reg.filter(|_| mmio) {
                region_keys.push((row, reg));
            }
            if mmio {
                plugin_keys.push((row, d));
            }
        }

        let kind = &self.kind;
        let sizes: Vec<u8> = kind.iter().map(|&k| k >> KIND_SIZE_SHIFT).collect();
        part.runs(
            "vcpu",
            &self.runs_of(|r| r.vcpu as u64),
            ArrowDataType::UInt32,
        )?;
        part.u64s("icount", &self.icount, U64Layout::Delta, LEVEL)?;
        part.u64s("pc", &self.pc, U64Layout::ByteStreamSplit, LEVEL)?;
        part.two_strings("type", &Bitmap::of_flag(kind, KIND_STORE), ["R", "W"])?;
        part.u64s("vaddr", &self.vaddr, U64Layout::ByteStreamSplit, LEVEL)?;
        part.u64s("paddr", &self.paddr, U64Layout::ByteStreamSplit, LEVEL)?;
        part.small_integers("size", &sizes, 256, ArrowDataType::UInt8)?;
        part.u64s("value", &self.value, U64Layout::Plain, VALUE_LEVEL)?;
        part.sparse_u64s("value_hi", &self.wide, VALUE_LEVEL)?;
        part.runs("asid", &self.runs_of(|r| r.asid), ArrowDataType::UInt64)?;
        if !mmio {
            part.bits("io", &Bitmap::of_flag(kind, KIND_IO))?;
        }
        part.sparse_strings("device", &device_keys, &device_names.values())?;
        if mmio {
            part.sparse_strings("region", &region_keys, &region_names.values())?;
            let values: Vec<&str> = devices.iter().map(String::as_str).collect();
            part.sparse_strings("plugin_device", &plugin_keys, &values)?;
        }
        Ok(())
    }
}

/// Distinct strings, numbered in order of first appearance.
#[derive(Default)]
struct Interner {
    keys: PlHashMap<String, u32>,
    values: Vec<String>,
}

impl Interner {
    fn key(&mut self, s: &str) -> u32 {
        if let Some(&k) = self.keys.get(s) {
            return k;
        }
        let k = self.values.len() as u32;
        self.values.push(s.to_string());
        self.keys.insert(s.to_string(), k);
        k
    }

    fn values(&self) -> Vec<&str> {
        self.values.iter().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace_schema::chunk::ChunkBuffer;

    fn access(size: u8, flags: u8, value: u64) -> MemAccess {
        MemAccess {
            pc: 0x10,
            vaddr: 0x2000,
            paddr: 0x3000,
            value,
            icount_delta: 0,
            size,
            flags,
            device: 7,
        }
    }

    /// A chunk's records as the shim lays them out.
    fn records(accesses: &[(MemAccess, bool)]) -> Vec<u8> {
        let mut c = ChunkBuffer::accesses();
        c.start(100, 0);
        for (i, (a, event)) in accesses.iter().enumerate() {
            let mut a = *a;
            a.icount_delta = i as u32;
            c.push_access(&a, *event);
        }
        let msg = c.seal(0, 0).to_vec();
        msg[trace_schema::chunk::HEADER_WORDS * 8..].to_vec()
    }

    #[test]
    fn a_chunk_becomes_rows_with_its_wide_values_and_devices() {
        let mut b = AccessBatch::default();
        b.start_run(3, 9);
        let recs = records(&[
            (access(4, FLAG_STORE, 1), true),
            (access(16, 0, 2), true),
            (access(16, FLAG_HIGH_HALF, 0x22), false),
            (access(4, FLAG_IO, 3), true),
        ]);
        assert_eq!(b.push_chunk(100, &recs), Ok(3));
        assert_eq!(b.icount, vec![100, 101, 103]);
        assert_eq!(b.value, vec![1, 2, 3]);
        assert_eq!(b.wide, vec![(1, 0x22)]);
        assert_eq!(b.devices, vec![(2, 7)]);
        assert_eq!(
            b.kind,
            vec![
                KIND_STORE | 4 << KIND_SIZE_SHIFT,
                16 << KIND_SIZE_SHIFT,
                KIND_IO | 4 << KIND_SIZE_SHIFT
            ]
        );
        assert_eq!(b.runs_of(|r| r.asid), vec![(9, 3)]);
        let mut m = AccessBatch::default();
        m.start_run(3, 9);
        m.push_row_of(&b, 1, 5);
        assert_eq!(
            (m.value.clone(), m.wide.clone()),
            (vec![2], vec![(0, 0x22)])
        );
    }

    #[test]
    fn misplaced_high_halves_are_errors() {
        let mut b = AccessBatch::default();
        let orphan = records(&[(access(8, FLAG_HIGH_HALF, 1), false)]);
        assert!(b
            .push_chunk(0, &orphan)
            .unwrap_err()
            .contains("follows no low half"));
        let missing = records(&[(access(16, 0, 1), true), (access(4, 0, 2), true)]);
        assert!(b
            .push_chunk(0, &missing)
            .unwrap_err()
            .contains("without its high half"));
        let last = records(&[(access(16, 0, 1), true)]);
        assert!(b
            .push_chunk(0, &last)
            .unwrap_err()
            .contains("without its high half"));
    }
}
