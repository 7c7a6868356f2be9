//! PANDA's bufmon: every access that touches one of the watched buffers.
//!
//! Output, one line per matching access of the `mem` table, ordered by
//! (icount, vcpu):
//!
//! ```text
//! READ|WRITE <icount> <caller> <pc> <asid> <addr> <size> <byte> <byte> ...
//! ```
//!
//! `icount` in decimal (PANDA prints the replay instruction count with
//! `PRId64`); `caller`, `pc`, `asid`, `addr` (the virtual address) and `size`
//! in hex zero-padded to the guest pointer width; then every byte of the
//! access as ` %02x` in memory order. See `analyzers/README.md`.

use std::io::Write;

use anyhow::{bail, Result};
use polars::prelude::*;

use crate::capture_dir::Capture;
use crate::hex::{access_bytes, hex_pad};
use crate::shadow_stack::{CallSites, ShadowStacks};
use crate::stream::{icount_range, sorted_window, window_rows, windows};
use crate::symbols::Symbols;

/// One watched buffer: `[vaddr, vaddr + size)` in address space `asid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub vaddr: u64,
    pub size: u64,
    pub asid: u64,
}

/// Where the `caller` column came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callers {
    /// A shadow call stack rebuilt from the `insn` and `code` tables.
    ShadowStack,
    /// No `insn` table: every caller is 0.
    NoInsnTable,
    /// An `insn` table but no `code` table (no disassembly to find calls
    /// in): every caller is 0.
    NoCodeTable,
}

/// What [`bufmon`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufmonReport {
    pub lines: u64,
    pub callers: Callers,
}

/// Parses a `search_buffers.txt`: one buffer a line, `<vaddr> <size>
/// <asid>` in hex (optional `0x`), blank lines and `#` comments skipped.
/// `source` names the file in error messages.
pub fn parse_buffers(text: &str, source: &str) -> Result<Vec<Buffer>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed: Option<Vec<u64>> = if fields.len() == 3 {
            fields.iter().map(|f| parse_hex(f)).collect()
        } else {
            None
        };
        let Some(v) = parsed else {
            bail!(
                "{source} line {lineno}: expected `<vaddr> <size> <asid>` in hex, got {:?}",
                raw
            );
        };
        if v[1] == 0 {
            bail!("{source} line {lineno}: buffer size is 0 in {:?}", raw);
        }
        out.push(Buffer {
            vaddr: v[0],
            size: v[1],
            asid: v[2],
        });
    }
    Ok(out)
}

fn parse_hex(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// The polars predicate "this access overlaps `b`": same asid, and
/// `[vaddr, vaddr+size)` intersects `[b.vaddr, b.vaddr+b.size)`, i.e.
/// `vaddr < b_end && vaddr + size - 1 >= b.vaddr` (written without
/// overflowing at the top of the address space).
fn overlaps(b: &Buffer) -> Expr {
    let last_byte = col("vaddr") + (col("size").cast(DataType::UInt64) - lit(1u64));
    let mut e = col("asid")
        .eq(lit(b.asid))
        .and(col("size").gt(lit(0u8)))
        .and(last_byte.gt_eq(lit(b.vaddr)));
    let end = u128::from(b.vaddr) + u128::from(b.size);
    if end <= u128::from(u64::MAX) {
        e = e.and(col("vaddr").lt(lit(end as u64)));
    }
    e
}

/// A matching access, as read from `mem`.
struct Access {
    vcpu: u32,
    icount: u64,
    pc: u64,
    write: bool,
    vaddr: u64,
    size: u8,
    value: u64,
    value_hi: Option<u64>,
    asid: u64,
}

fn mem_cols() -> [Expr; 9] {
    [
        col("vcpu").cast(DataType::UInt32),
        col("icount").cast(DataType::UInt64),
        col("pc").cast(DataType::UInt64),
        col("type"),
        col("vaddr").cast(DataType::UInt64),
        col("size").cast(DataType::UInt8),
        col("value").cast(DataType::UInt64),
        col("value_hi").cast(DataType::UInt64),
        col("asid").cast(DataType::UInt64),
    ]
}

fn insn_cols() -> [Expr; 4] {
    [
        col("vcpu").cast(DataType::UInt32),
        col("icount").cast(DataType::UInt64),
        col("pc").cast(DataType::UInt64),
        col("block").cast(DataType::UInt64),
    ]
}

fn accesses(df: &DataFrame) -> Result<Vec<Access>> {
    let vcpu = df.column("vcpu")?.u32()?;
    let icount = df.column("icount")?.u64()?;
    let pc = df.column("pc")?.u64()?;
    let ty = df.column("type")?.str()?;
    let vaddr = df.column("vaddr")?.u64()?;
    let size = df.column("size")?.u8()?;
    let value = df.column("value")?.u64()?;
    let value_hi = df.column("value_hi")?.u64()?;
    let asid = df.column("asid")?.u64()?;
    Ok((0..df.height())
        .map(|i| Access {
            vcpu: vcpu.get(i).unwrap_or(0),
            icount: icount.get(i).unwrap_or(0),
            pc: pc.get(i).unwrap_or(0),
            write: ty.get(i) == Some("W"),
            vaddr: vaddr.get(i).unwrap_or(0),
            size: size.get(i).unwrap_or(0),
            value: value.get(i).unwrap_or(0),
            value_hi: value_hi.get(i),
            asid: asid.get(i).unwrap_or(0),
        })
        .collect())
}

/// Walks one window of call/return instructions (`events`, sorted by
/// (icount, vcpu)) through the shadow stacks and returns the caller of each
/// access of the same window (`acc`, sorted likewise): the stack top after
/// the pop of the access's own instruction, before its push.
fn walk(
    events: &DataFrame,
    sites: &CallSites,
    stacks: &mut ShadowStacks,
    acc: &[Access],
) -> Result<Vec<u64>> {
    let mut out = vec![0u64; acc.len()];
    let vcpu = events.column("vcpu")?.u32()?;
    let icount = events.column("icount")?.u64()?;
    let pc = events.column("pc")?.u64()?;
    let block = events.column("block")?.u64()?;
    let key = |a: &Access| (a.icount, a.vcpu);
    let mut next = 0usize;
    for i in 0..events.height() {
        let (Some(v), Some(ic), Some(p)) = (vcpu.get(i), icount.get(i), pc.get(i)) else {
            continue;
        };
        while next < acc.len() && key(&acc[next]) < (ic, v) {
            out[next] = stacks.top(acc[next].vcpu);
            next += 1;
        }
        if sites.is_return_address(p) {
            stacks.reach(v, p);
        }
        while next < acc.len() && key(&acc[next]) == (ic, v) {
            out[next] = stacks.top(v);
            next += 1;
        }
        if let Some(ret) = block.get(i).and_then(|b| sites.return_address(b, p)) {
            stacks.call(v, ret);
        }
    }
    while next < acc.len() {
        out[next] = stacks.top(acc[next].vcpu);
        next += 1;
    }
    Ok(out)
}

/// Writes bufmon's report for `buffers` to `w`.
pub fn bufmon(cap: &Capture, buffers: &[Buffer], w: &mut dyn Write) -> Result<BufmonReport> {
    bufmon_windowed(cap, buffers, w, window_rows())
}

/// [`bufmon`], each line ending with ` <caller> <pc>`: the functions, in
/// `symbols`, of the caller and of the accessing instruction (`?` outside
/// every function, and for an unknown caller).
pub fn bufmon_with_symbols(
    cap: &Capture,
    buffers: &[Buffer],
    w: &mut dyn Write,
    symbols: &Symbols,
) -> Result<BufmonReport> {
    write_bufmon(cap, buffers, w, window_rows(), Some(symbols))
}

/// [`bufmon`] reading about `window_rows` rows (matching accesses plus
/// call/return instructions) at a time.
pub fn bufmon_windowed(
    cap: &Capture,
    buffers: &[Buffer],
    w: &mut dyn Write,
    window_rows: u64,
) -> Result<BufmonReport> {
    write_bufmon(cap, buffers, w, window_rows, None)
}

fn write_bufmon(
    cap: &Capture,
    buffers: &[Buffer],
    w: &mut dyn Write,
    window_rows: u64,
    symbols: Option<&Symbols>,
) -> Result<BufmonReport> {
    let callers = if !cap.has_table("insn") {
        Callers::NoInsnTable
    } else if !cap.has_table("code") {
        Callers::NoCodeTable
    } else {
        Callers::ShadowStack
    };
    let mut report = BufmonReport { lines: 0, callers };
    cap.require("mem", "bufmon")?;
    let Some(matches) = buffers.iter().map(overlaps).reduce(|a, b| a.or(b)) else {
        return Ok(report);
    };
    let Some(mut range) = icount_range(cap, "mem", Some(matches.clone()))? else {
        return Ok(report);
    };
    let last = range.hi;

    // Only the instructions that can push or pop are read from insn: the
    // calls and the instructions at a return address, up to the last match.
    let mut tracker = None;
    if callers == Callers::ShadowStack {
        let sites = CallSites::read(cap)?;
        if !sites.is_empty() {
            let pcs = Series::new("pcs".into(), sites.pcs());
            let events = col("icount")
                .lt_eq(lit(last))
                .and(col("pc").is_in(lit(pcs).implode(false), false));
            if let Some(er) = icount_range(cap, "insn", Some(events.clone()))? {
                range = range.union(er);
            }
            tracker = Some((sites, events));
        }
    }

    let d = cap.ptr_digits();
    let mut stacks = ShadowStacks::default();
    let mut line = String::new();
    for win in windows(range, window_rows) {
        let acc = accesses(&sorted_window(
            cap,
            "mem",
            win,
            Some(matches.clone()),
            &mem_cols(),
        )?)?;
        let caller = match &tracker {
            Some((sites, events)) => {
                let ev = sorted_window(cap, "insn", win, Some(events.clone()), &insn_cols())?;
                walk(&ev, sites, &mut stacks, &acc)?
            }
            None => vec![0; acc.len()],
        };
        for (a, c) in acc.iter().zip(caller) {
            use std::fmt::Write as _;
            line.clear();
            let _ = write!(
                line,
                "{} {} {} {} {} {} {}",
                if a.write { "WRITE" } else { "READ" },
                a.icount,
                hex_pad(c, d),
                hex_pad(a.pc, d),
                hex_pad(a.asid, d),
                hex_pad(a.vaddr, d),
                hex_pad(u64::from(a.size), d),
            );
            for b in access_bytes(a.size, a.value, a.value_hi) {
                let _ = write!(line, " {b:02x}");
            }
            if let Some(s) = symbols {
                let name = |addr: u64| s.name(addr).unwrap_or_else(|| "?".into());
                let caller = if c == 0 { "?".into() } else { name(c) };
                let _ = write!(line, " <{caller}> <{}>", name(a.pc));
            }
            line.push('\n');
            w.write_all(line.as_bytes())?;
            report.lines += 1;
        }
    }
    w.flush()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let b = parse_buffers(
            "# comment\n\n10000 10 3f9b2040\n0x20 0X4 0  # trailing\n",
            "f",
        )
        .unwrap();
        assert_eq!(
            b,
            vec![
                Buffer {
                    vaddr: 0x10000,
                    size: 0x10,
                    asid: 0x3f9b2040
                },
                Buffer {
                    vaddr: 0x20,
                    size: 4,
                    asid: 0
                }
            ]
        );
        let e = parse_buffers("10 4 0\n10 zz 0\n", "bufs.txt").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bufs.txt line 2: expected `<vaddr> <size> <asid>` in hex, got \"10 zz 0\""
        );
        let e = parse_buffers("10 4\n", "b").unwrap_err();
        assert!(e.to_string().starts_with("b line 1:"), "{e}");
        let e = parse_buffers("10 0 0\n", "b").unwrap_err();
        assert!(e.to_string().contains("size is 0"), "{e}");
    }
}
