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

use std::borrow::Cow;

use anyhow::Result;
use polars::prelude::PlHashMap;
use polars_arrow::datatypes::ArrowDataType;
use trace_schema::chunk::MemAccess;

use crate::parquet_part::{PartBuilder, U64Layout, LEVEL, VALUE_LEVEL};
use crate::tables::DeviceNames;

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
        self.kind
            .push(a.is_store() as u8 * KIND_STORE | io as u8 * KIND_IO | a.size << KIND_SIZE_SHIFT);
        if a.size > 8 {
            self.wide.push((row, high));
        }
        if io {
            self.devices.push((row, device));
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
        part.two_strings("type", |i| kind[i] & KIND_STORE != 0, ["R", "W"])?;
        part.u64s("vaddr", &self.vaddr, U64Layout::ByteStreamSplit, LEVEL)?;
        part.u64s("paddr", &self.paddr, U64Layout::ByteStreamSplit, LEVEL)?;
        part.small_integers("size", &sizes, 256, ArrowDataType::UInt8)?;
        part.u64s("value", &self.value, U64Layout::Plain, VALUE_LEVEL)?;
        part.sparse_u64s("value_hi", &self.wide, VALUE_LEVEL)?;
        part.runs("asid", &self.runs_of(|r| r.asid), ArrowDataType::UInt64)?;
        if !mmio {
            part.bits("io", |i| kind[i] & KIND_IO != 0)?;
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
    fn key(&mut self, s: &Cow<str>) -> u32 {
        if let Some(&k) = self.keys.get(s.as_ref()) {
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
