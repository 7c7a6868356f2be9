//! `trace_analyzers`: SQL over capture directories written by
//! `trace-collector` (see `docs/capture-format.md`), and analyzers that
//! rebuild the output of well-known tools from them: PANDA's bufmon and
//! mmio_trace, QEMU's execlog, an SVG timeline of MMIO accesses, and a
//! Perfetto trace to explore a capture in ui.perfetto.dev.
//!
//! Every analyzer is a function taking an open [`Capture`] and a
//! `&mut dyn Write`. Tables are read with lazy polars scans; the large ones
//! (`insn`, `mem`) are streamed in icount windows (see [`stream`]).

pub mod bufmon;
pub mod capture_dir;
pub mod dataset;
pub mod direct_aggregate;
pub mod execlog;
pub mod hex;
pub mod line_prefix;
pub mod mmio_json;
pub mod output;
pub mod perfetto;
pub mod perfetto_trace;
pub mod protobuf;
pub mod shadow_stack;
pub mod sql;
pub mod stream;
pub mod symbols;
pub mod timeline;

pub use capture_dir::{Capture, TableInfo};
pub use output::Format;
