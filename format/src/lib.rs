//! The capture directory's contract, declared once: between the collector
//! that writes a capture and everything that reads it (`trace-query` and
//! its analyzers, the tests, DuckDB or pyarrow users through
//! docs/capture-format.md, whose tables a test checks against these
//! declarations).
//!
//! - [`Table`] declares the tables, their directories and columns.
//! - [`stats`] declares the counters of the `stats` table, each with its scope,
//!   its meaning and whether it means data loss.
//! - [`CaptureJson`] is `capture.json`.
//! - [`memory_map`] reads `mtree.txt`, QEMU's memory map.
//!
//! The shared memory between the shim and the collector is another
//! contract, `trace-schema`'s.

mod capture_json;
pub mod memory_map;
pub mod stats;
mod tables;

pub use capture_json::{CaptureJson, End, Window};
pub use tables::{insn_view_columns, Column, ColumnType, Table, INSN_VIEW, STANDARD_TABLES};

/// The capture directory's format version (`capture.json`'s
/// `format_version`). Version 1 captures hold an `insn` table instead of
/// `block_exec`; readers read both.
pub const FORMAT_VERSION: u32 = 2;

/// Most instructions in a translated block (QEMU's TCG_MAX_INSNS): the
/// largest `block_exec.insns`, so a block that ran instruction `i` started
/// at most this many instructions before it.
pub const MAX_BLOCK_INSNS: u64 = 512;
