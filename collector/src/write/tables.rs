//! The capture's tables: their column batches (plain vectors filled by the
//! drain, one push per column per row, nothing allocated per row) and how a
//! full batch becomes a Parquet part with the columns of
//! docs/capture-format.md, each column encoded for what it holds
//! (`parquet_part`). The encoding runs on a writer thread.

use std::borrow::Cow;
use std::sync::Arc;

use anyhow::Result;
use polars_arrow::datatypes::ArrowDataType;

pub use crate::write::access_batch::{AccessBatch, NO_DEVICE};
use crate::write::parquet_part::{Compressors, PartBuilder, U64Layout, LEVEL};

pub use trace_format::Table;

/// Resolves the names written for an I/O access: the `device` column, and
/// (`mmio`) the `region` column, QEMU's exact region name when known. The
/// plugin's name is kept as is in `plugin_device`. See `memory_map` for the
/// resolver built from QEMU's memory map.
pub trait DeviceNames: Send + Sync {
    fn resolve<'a>(
        &'a self,
        paddr: u64,
        plugin_name: &'a str,
    ) -> (Cow<'a, str>, Option<Cow<'a, str>>);

    /// The drain met the first I/O access to a device name new to the
    /// capture, at `paddr`, made by (vCPU, icount) `at`, while QEMU runs
    /// (parts are resolved later, maybe after it exited): the moment to
    /// learn of a change of its memory map.
    fn noticed(&self, _paddr: u64, _plugin_name: &str, _at: (u32, u64)) {}
}

/// The plugin API's name, as is (no memory map): for tests.
#[cfg(test)]
pub struct PluginDeviceNames;

#[cfg(test)]
impl DeviceNames for PluginDeviceNames {
    fn resolve<'a>(
        &'a self,
        _paddr: u64,
        plugin_name: &'a str,
    ) -> (Cow<'a, str>, Option<Cow<'a, str>>) {
        (Cow::Borrowed(plugin_name), None)
    }
}

/// Rows of `block_exec`: one per executed block, saying how many of its
/// instructions ran. Per-instruction rows (the `insn` view of the readers)
/// are this joined with `code` on `block`, `index < insns`: a tenth of the
/// rows to encode while capturing, for the same information.
#[derive(Default, Debug)]
pub struct BlockExecBatch {
    /// Rows from `.0` up to the next run's were executed by vCPU `.1`.
    pub runs: Vec<(u32, u32)>,
    /// The icount of the block's first instruction.
    pub icount: Vec<u64>,
    pub block: Vec<u64>,
    /// How many of the block's instructions ran (fewer than its length when
    /// it stopped early, on an exception).
    pub insns: Vec<u32>,
}

impl BlockExecBatch {
    pub fn with_capacity(n: usize) -> BlockExecBatch {
        BlockExecBatch {
            runs: Vec::new(),
            icount: Vec::with_capacity(n),
            block: Vec::with_capacity(n),
            insns: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.icount.len()
    }

    #[inline]
    pub fn push(&mut self, vcpu: u32, icount: u64, block: u64, insns: u32) {
        let row = self.len() as u32;
        if self.runs.last().is_none_or(|r| r.1 != vcpu) {
            self.runs.push((row, vcpu));
        }
        self.icount.push(icount);
        self.block.push(block);
        self.insns.push(insns);
    }

    /// Adds a row for each of the blocks whose ids are `ids` (8 bytes each,
    /// little-endian), all run whole by vCPU `vcpu`, the first from
    /// `icount`, each next where the one before ended; returns the icount
    /// after the last. The drain's hot loop: room is reserved once, and
    /// each row written without a capacity check per value.
    pub fn push_whole(&mut self, vcpu: u32, mut icount: u64, ids: &[u8]) -> u64 {
        let n = ids.len() / 8;
        let first = self.len();
        if n > 0 && self.runs.last().is_none_or(|r| r.1 != vcpu) {
            self.runs.push((first as u32, vcpu));
        }
        self.icount.reserve(n);
        self.block.reserve(n);
        self.insns.reserve(n);
        for (k, id) in ids.chunks_exact(8).enumerate() {
            let id = u64::from_le_bytes(id.try_into().unwrap());
            let len = trace_schema::chunk::block_insns(id);
            // Safety: `first + k` is below `first + n`, for which each
            // vector reserved room above; `set_len` below covers exactly
            // the rows written.
            unsafe {
                self.icount.as_mut_ptr().add(first + k).write(icount);
                self.block.as_mut_ptr().add(first + k).write(id);
                self.insns.as_mut_ptr().add(first + k).write(len as u32);
            }
            icount = icount.wrapping_add(len);
        }
        // Safety: rows `first..first + n` were written above.
        unsafe {
            self.icount.set_len(first + n);
            self.block.set_len(first + n);
            self.insns.set_len(first + n);
        }
        icount
    }

    /// Adds the `block_exec` table's columns to `part`: `vcpu` one run per
    /// run of rows, `insns` (at most a block's length, 512 in QEMU) as keys
    /// into the dictionary of its range of values.
    pub fn write_columns(self, part: &mut PartBuilder) -> Result<()> {
        let n = self.len() as u64;
        let runs: Vec<(u64, u64)> = self
            .runs
            .iter()
            .enumerate()
            .map(|(i, &(from, vcpu))| {
                let to = self.runs.get(i + 1).map_or(n, |next| next.0 as u64);
                (vcpu as u64, to - from as u64)
            })
            .collect();
        part.runs("vcpu", &runs, ArrowDataType::UInt32)?;
        part.u64s("icount", &self.icount, U64Layout::Delta, LEVEL)?;
        part.u64s("block", &self.block, U64Layout::ByteStreamSplit, LEVEL)?;
        part.narrow_u32s("insns", &self.insns)?;
        Ok(())
    }
}

/// Rows of `code`. Variable-size fields are kept in one buffer each, with
/// the end offset of every row.
#[derive(Default, Debug)]
pub struct CodeBatch {
    pub block: Vec<u64>,
    pub index: Vec<u32>,
    pub pc: Vec<u64>,
    pub size: Vec<u8>,
    pub opcode: Vec<u32>,
    bytes: Vec<u8>,
    bytes_end: Vec<usize>,
    text: String,
    disas_end: Vec<usize>,
    symbol_end: Vec<usize>,
}

impl CodeBatch {
    pub fn len(&self) -> usize {
        self.block.len()
    }

    pub fn push(
        &mut self,
        block: u64,
        index: u32,
        pc: u64,
        bytes: &[u8],
        disas: &str,
        symbol: &str,
    ) {
        self.block.push(block);
        self.index.push(index);
        self.pc.push(pc);
        self.size.push(bytes.len().min(u8::MAX as usize) as u8);
        let mut op = [0u8; 4];
        let k = bytes.len().min(4);
        op[..k].copy_from_slice(&bytes[..k]);
        self.opcode.push(u32::from_le_bytes(op));
        self.bytes.extend_from_slice(bytes);
        self.bytes_end.push(self.bytes.len());
        self.text.push_str(disas);
        self.disas_end.push(self.text.len());
        self.text.push_str(symbol);
        self.symbol_end.push(self.text.len());
    }

    /// Adds the `code` table's columns to `part`.
    pub fn write_columns(self, part: &mut PartBuilder) -> Result<()> {
        let ranges = |ends: &[usize], starts: &[usize]| -> Vec<(usize, usize)> {
            starts.iter().copied().zip(ends.iter().copied()).collect()
        };
        let bytes_starts: Vec<usize> = std::iter::once(0)
            .chain(self.bytes_end.iter().copied())
            .collect();
        let disas_starts: Vec<usize> = std::iter::once(0)
            .chain(self.symbol_end.iter().copied())
            .collect();
        let bytes = ranges(&self.bytes_end, &bytes_starts);
        let disas = ranges(&self.disas_end, &disas_starts);
        let symbol = ranges(&self.symbol_end, &self.disas_end);
        let text = self.text.as_bytes();
        part.u64s("block", &self.block, U64Layout::ByteStreamSplit, LEVEL)?;
        part.small_integers("index", &self.index, 1024, ArrowDataType::UInt32)?;
        part.u64s("pc", &self.pc, U64Layout::ByteStreamSplit, LEVEL)?;
        part.small_integers("size", &self.size, 256, ArrowDataType::UInt8)?;
        part.byte_arrays(
            "bytes",
            bytes.iter().map(|&(a, b)| &self.bytes[a..b]),
            ArrowDataType::BinaryView,
        )?;
        part.u32s("opcode", &self.opcode)?;
        part.byte_arrays(
            "disas",
            disas.iter().map(|&(a, b)| &text[a..b]),
            ArrowDataType::Utf8View,
        )?;
        part.byte_arrays(
            "symbol",
            symbol.iter().map(|&(a, b)| &text[a..b]),
            ArrowDataType::Utf8View,
        )?;
        Ok(())
    }
}

/// Rows of `stats`.
#[derive(Default, Debug)]
pub struct StatsBatch {
    pub name: Vec<String>,
    pub vcpu: Vec<Option<u32>>,
    pub value: Vec<u64>,
}

impl StatsBatch {
    pub fn push(&mut self, name: impl Into<String>, vcpu: Option<u32>, value: u64) {
        self.name.push(name.into());
        self.vcpu.push(vcpu);
        self.value.push(value);
    }

    pub fn len(&self) -> usize {
        self.name.len()
    }

    /// Adds the `stats` table's columns to `part`.
    pub fn write_columns(self, part: &mut PartBuilder) -> Result<()> {
        part.byte_arrays(
            "name",
            self.name.iter().map(String::as_bytes),
            ArrowDataType::Utf8View,
        )?;
        part.nullable_u32s("vcpu", &self.vcpu)?;
        part.u64s("value", &self.value, U64Layout::Delta, LEVEL)?;
        Ok(())
    }
}

/// One table's batch.
#[derive(Debug)]
pub enum Batch {
    Mem(AccessBatch),
    Mmio(AccessBatch),
    BlockExec(BlockExecBatch),
    Code(CodeBatch),
    Stats(StatsBatch),
}

impl Batch {
    /// An empty batch of `table`, with room for `n` rows.
    #[cfg(test)]
    pub fn new(table: Table, n: usize) -> Batch {
        match table {
            Table::Mem => Batch::Mem(AccessBatch::with_capacity(n)),
            Table::Mmio => Batch::Mmio(AccessBatch::with_capacity(n)),
            Table::BlockExec => Batch::BlockExec(BlockExecBatch::with_capacity(n)),
            Table::Code => Batch::Code(CodeBatch::default()),
            Table::Stats => Batch::Stats(StatsBatch::default()),
        }
    }

    pub fn table(&self) -> Table {
        match self {
            Batch::Mem(_) => Table::Mem,
            Batch::Mmio(_) => Table::Mmio,
            Batch::BlockExec(_) => Table::BlockExec,
            Batch::Code(_) => Table::Code,
            Batch::Stats(_) => Table::Stats,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Batch::Mem(b) | Batch::Mmio(b) => b.len(),
            Batch::BlockExec(b) => b.len(),
            Batch::Code(b) => b.len(),
            Batch::Stats(b) => b.len(),
        }
    }

    /// Writes the batch to `w` as one Parquet part; returns its size in
    /// bytes. `devices` is the capture's device list (plugin names) as it
    /// was when the batch was handed over.
    pub fn write<W: std::io::Write>(
        self,
        devices: &[String],
        names: &dyn DeviceNames,
        compressors: &mut Compressors,
        w: W,
    ) -> Result<u64> {
        let mut part = PartBuilder::new(self.len(), compressors);
        match self {
            Batch::Mem(b) => b.write_columns(false, devices, names, &mut part)?,
            Batch::Mmio(b) => b.write_columns(true, devices, names, &mut part)?,
            Batch::BlockExec(b) => b.write_columns(&mut part)?,
            Batch::Code(b) => b.write_columns(&mut part)?,
            Batch::Stats(b) => b.write_columns(&mut part)?,
        }
        part.write(w)
    }
}

/// The capture's device list (plugin names, first seen first), shared
/// copy-on-write with the batches handed to the writer.
pub type DeviceList = Arc<Vec<String>>;

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    /// `batch` written as a Parquet part and read back with polars, as
    /// readers see it.
    fn written(batch: Batch, devices: &[String]) -> DataFrame {
        let mut file = Vec::new();
        batch
            .write(
                devices,
                &PluginDeviceNames,
                &mut Compressors::default(),
                &mut file,
            )
            .unwrap();
        ParquetReader::new(std::io::Cursor::new(file))
            .finish()
            .unwrap()
    }

    fn schema_of(table: Table) -> Vec<(String, DataType)> {
        written(Batch::new(table, 0), &[])
            .schema()
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect()
    }

    /// The commit record in the segment counts per table, in the order of
    /// the schema's stream list: `Table::index` must follow it.
    #[test]
    fn tables_are_the_commit_record_s_streams() {
        for t in Table::ALL {
            assert_eq!(trace_schema::commit::STREAMS[t.index()], t.name());
        }
        assert_eq!(Table::ALL.len(), trace_schema::commit::STREAMS.len());
    }

    /// The String columns built as dictionaries from codes read back as the
    /// strings they stand for, nulls included.
    #[test]
    fn mmio_strings_read_back() {
        let devices = vec!["uart".to_string(), "anon0x1".to_string()];
        let mut b = AccessBatch::with_capacity(4);
        use trace_schema::chunk::{MemAccess, FLAG_IO, FLAG_STORE};
        let access = |store, paddr| MemAccess {
            size: 4,
            flags: if store { FLAG_STORE | FLAG_IO } else { FLAG_IO },
            paddr,
            ..MemAccess::default()
        };
        b.start_run(0, 0);
        b.push(0, &access(true, 0x10), 0, 0);
        b.push(0, &access(false, 0x20), 0, 1);
        b.push(0, &access(false, 0x30), 0, NO_DEVICE);
        b.push(0, &access(true, 0x10), 0, 0);
        let df = written(Batch::Mmio(b), &devices);
        let strs = |c: &str| -> Vec<Option<String>> {
            df.column(c)
                .unwrap()
                .str()
                .unwrap()
                .iter()
                .map(|s| s.map(str::to_owned))
                .collect()
        };
        let some = |s: &str| Some(s.to_string());
        assert_eq!(strs("type"), [some("W"), some("R"), some("R"), some("W")]);
        assert_eq!(
            strs("device"),
            [some("uart"), some("anon0x1"), None, some("uart")]
        );
        // PluginDeviceNames knows no regions.
        assert_eq!(strs("region"), [None, None, None, None]);
        assert_eq!(
            strs("plugin_device"),
            [some("uart"), some("anon0x1"), None, some("uart")]
        );
    }

    /// Every table is written with the columns and types the format
    /// declares (`trace_format`, which a test checks against
    /// docs/capture-format.md).
    #[test]
    fn parts_have_the_declared_columns() {
        for t in Table::ALL {
            let declared: Vec<(std::string::String, DataType)> = t
                .columns()
                .iter()
                .map(|c| (c.name.to_string(), c.ty.polars()))
                .collect();
            assert_eq!(schema_of(t), declared, "{}", t.name());
        }
    }

    #[test]
    fn code_rows_keep_their_variable_fields_apart() {
        let mut b = CodeBatch::default();
        b.push(7, 0, 0x100, &[0x01, 0x02], "movs r0, #1", "");
        b.push(
            7,
            1,
            0x102,
            &[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff],
            "bl foo",
            "main",
        );
        let df = written(Batch::Code(b), &[]);
        let opcode: Vec<u32> = df
            .column("opcode")
            .unwrap()
            .u32()
            .unwrap()
            .no_null_iter()
            .collect();
        assert_eq!(opcode, vec![0x0201, 0xddccbbaa]);
        let size: Vec<u8> = df
            .column("size")
            .unwrap()
            .u8()
            .unwrap()
            .no_null_iter()
            .collect();
        assert_eq!(size, vec![2, 6]);
        let bytes: Vec<&[u8]> = df
            .column("bytes")
            .unwrap()
            .binary()
            .unwrap()
            .no_null_iter()
            .collect();
        assert_eq!(
            bytes,
            vec![&[1u8, 2][..], &[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff][..]]
        );
        let disas: Vec<&str> = df
            .column("disas")
            .unwrap()
            .str()
            .unwrap()
            .no_null_iter()
            .collect();
        assert_eq!(disas, vec!["movs r0, #1", "bl foo"]);
        let symbol: Vec<&str> = df
            .column("symbol")
            .unwrap()
            .str()
            .unwrap()
            .no_null_iter()
            .collect();
        assert_eq!(symbol, vec!["", "main"]);
    }
}
