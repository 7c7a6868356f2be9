//! QEMU's execlog plugin output, rebuilt from `insn` + `code` + `mem`.
//!
//! One line per executed instruction, in (icount, vcpu) order:
//!
//! ```text
//! <cpu>, 0x<pc>, 0x<opcode>, "<disas>"[, load|store, 0x<paddr>, <device>]...
//! ```
//!
//! with execlog.c's formats: `"%u, "`, `"0x%"PRIx64", 0x%"PRIx32", \"%s\""`
//! and, per memory access in the order recorded, `", load"`/`", store"` then
//! `", 0x%08"PRIx64", %s"` (physical address; the `device` column for I/O,
//! `RAM` otherwise).

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;
use polars::prelude::*;

use crate::capture_dir::{Capture, UNKNOWN_DEVICE};
use crate::stream::{icount_range, sorted_window, window_rows, windows};
use crate::symbols::Symbols;

/// What [`execlog`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExeclogReport {
    /// Lines (instructions) written.
    pub lines: u64,
    /// Instructions whose (block, pc) has no row in `code`: printed with
    /// opcode 0 and an empty disassembly.
    pub missing_code: u64,
}

/// Writes the execlog to `w`. Reads `insn` and `mem` in icount windows, so
/// memory use stays bounded whatever the trace length.
pub fn execlog(cap: &Capture, w: &mut dyn Write) -> Result<ExeclogReport> {
    execlog_windowed(cap, w, window_rows())
}

/// [`execlog`], each line ending with `, <name+0xoff>`: the function of
/// its instruction in `symbols` (`<?>` outside every function).
pub fn execlog_with_symbols(
    cap: &Capture,
    w: &mut dyn Write,
    symbols: &Symbols,
) -> Result<ExeclogReport> {
    write_execlog(cap, w, window_rows(), Some(symbols))
}

/// [`execlog`] reading about `window_rows` instructions at a time.
pub fn execlog_windowed(
    cap: &Capture,
    w: &mut dyn Write,
    window_rows: u64,
) -> Result<ExeclogReport> {
    write_execlog(cap, w, window_rows, None)
}

fn write_execlog(
    cap: &Capture,
    w: &mut dyn Write,
    window_rows: u64,
    symbols: Option<&Symbols>,
) -> Result<ExeclogReport> {
    cap.require("insn", "execlog")?;
    let code = load_code(cap)?;
    let mem = cap.has_table("mem");
    let insn_cols = [
        col("vcpu").cast(DataType::UInt32),
        col("icount").cast(DataType::UInt64),
        col("pc").cast(DataType::UInt64),
        col("block").cast(DataType::UInt64),
    ];
    let mem_cols = [
        col("vcpu").cast(DataType::UInt32),
        col("icount").cast(DataType::UInt64),
        col("type"),
        col("paddr").cast(DataType::UInt64),
        col("io"),
        col("device"),
    ];
    let mut report = ExeclogReport::default();
    let Some(range) = icount_range(cap, "insn", None)? else {
        return Ok(report);
    };
    let mut line = String::new();
    for win in windows(range, window_rows) {
        let df = sorted_window(cap, "insn", win, None, &insn_cols)?;
        if df.height() == 0 {
            continue;
        }
        let accesses = if mem {
            Some(sorted_window(cap, "mem", win, None, &mem_cols)?)
        } else {
            None
        };
        let vcpu = df.column("vcpu")?.u32()?;
        let icount = df.column("icount")?.u64()?;
        let pc = df.column("pc")?.u64()?;
        let block = df.column("block")?.u64()?;
        let mut acc = Accesses::new(accesses.as_ref())?;
        for i in 0..df.height() {
            let (v, ic, p) = (
                vcpu.get(i).unwrap_or(0),
                icount.get(i).unwrap_or(0),
                pc.get(i).unwrap_or(0),
            );
            let (opcode, disas) = match block.get(i).and_then(|b| code.get(&(b, p))) {
                Some((op, d)) => (*op, d.as_str()),
                None => {
                    report.missing_code += 1;
                    (0, "")
                }
            };
            line.clear();
            use std::fmt::Write as _;
            let _ = write!(line, "{v}, 0x{p:x}, 0x{opcode:x}, \"{disas}\"");
            acc.append_for(ic, v, &mut line);
            if let Some(s) = symbols {
                let _ = write!(line, ", <{}>", s.name(p).as_deref().unwrap_or("?"));
            }
            line.push('\n');
            w.write_all(line.as_bytes())?;
            report.lines += 1;
        }
    }
    w.flush()?;
    Ok(report)
}

/// (block, pc) -> (opcode, disassembly), from the `code` table.
fn load_code(cap: &Capture) -> Result<HashMap<(u64, u64), (u32, String)>> {
    let lf = cap.scan_required("code", "execlog")?.select([
        col("block").cast(DataType::UInt64),
        col("pc").cast(DataType::UInt64),
        col("opcode").cast(DataType::UInt32),
        col("disas"),
    ]);
    let df = cap.collect(lf)?;
    let block = df.column("block")?.u64()?;
    let pc = df.column("pc")?.u64()?;
    let opcode = df.column("opcode")?.u32()?;
    let disas = df.column("disas")?.str()?;
    let mut map = HashMap::with_capacity(df.height());
    for i in 0..df.height() {
        if let (Some(b), Some(p)) = (block.get(i), pc.get(i)) {
            map.entry((b, p)).or_insert_with(|| {
                (
                    opcode.get(i).unwrap_or(0),
                    disas.get(i).unwrap_or("").to_owned(),
                )
            });
        }
    }
    Ok(map)
}

/// A cursor over a window's memory accesses, sorted like the instructions.
struct Accesses<'a> {
    n: usize,
    next: usize,
    cols: Option<AccessCols<'a>>,
}

struct AccessCols<'a> {
    vcpu: &'a UInt32Chunked,
    icount: &'a UInt64Chunked,
    ty: &'a StringChunked,
    paddr: &'a UInt64Chunked,
    io: &'a BooleanChunked,
    device: &'a StringChunked,
}

impl<'a> Accesses<'a> {
    fn new(df: Option<&'a DataFrame>) -> Result<Self> {
        let Some(df) = df else {
            return Ok(Accesses {
                n: 0,
                next: 0,
                cols: None,
            });
        };
        Ok(Accesses {
            n: df.height(),
            next: 0,
            cols: Some(AccessCols {
                vcpu: df.column("vcpu")?.u32()?,
                icount: df.column("icount")?.u64()?,
                ty: df.column("type")?.str()?,
                paddr: df.column("paddr")?.u64()?,
                io: df.column("io")?.bool()?,
                device: df.column("device")?.str()?,
            }),
        })
    }

    /// Appends the accesses of instruction (icount, vcpu) to `line`,
    /// skipping accesses of instructions not in `insn`.
    fn append_for(&mut self, icount: u64, vcpu: u32, line: &mut String) {
        use std::fmt::Write as _;
        let Some(c) = &self.cols else { return };
        while self.next < self.n {
            let i = self.next;
            let key = (c.icount.get(i).unwrap_or(0), c.vcpu.get(i).unwrap_or(0));
            if key > (icount, vcpu) {
                break;
            }
            self.next += 1;
            if key < (icount, vcpu) {
                continue;
            }
            let kind = if c.ty.get(i) == Some("W") {
                "store"
            } else {
                "load"
            };
            let device = if c.io.get(i).unwrap_or(false) {
                c.device.get(i).unwrap_or(UNKNOWN_DEVICE)
            } else {
                "RAM"
            };
            let _ = write!(
                line,
                ", {kind}, 0x{:08x}, {device}",
                c.paddr.get(i).unwrap_or(0)
            );
        }
    }
}
