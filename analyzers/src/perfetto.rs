//! `trace-query perfetto`: a capture as a Perfetto trace, to explore in
//! ui.perfetto.dev.
//!
//! Timestamps are instruction counts: an event at `icount` N of its vCPU is
//! at N ns, so 1 ns = 1 guest instruction. Each vCPU counts its own
//! instructions: on a capture of several vCPUs their times do not line up.
//!
//! Under one root track (the capture):
//! - `capture`: one instant at the capture's first icount,
//!   `timestamps: 1 ns = 1 guest instruction (icount) of the vCPU`, with
//!   the capture's directory, QEMU command line and recorded events;
//! - `vCPU N functions` (when `insn` was captured): a slice per function
//!   call, from the callee's first instruction to the instruction at the
//!   return address, nested as the calls were, rebuilt with the shadow call
//!   stack of [`crate::shadow_stack`]; named after the callee (`--symbols`)
//!   or its address in hex;
//! - `MMIO <device>` (from the `mmio` table): an instant per access, named
//!   `read 0x8` / `write 0x0` after the register's offset in the device's
//!   region (`@0x4000c000`, the physical address, when the capture has no
//!   `mtree.txt`), with its offset, physical address, value, size, pc,
//!   vCPU (and symbol with `--symbols`) as debug annotations.
//!
//! `mmio` and `insn` are read in icount windows (see [`crate::stream`]):
//! memory stays bounded whatever the capture's length.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::{bail, Result};
use polars::prelude::*;

use crate::capture_dir::{Capture, UNKNOWN_DEVICE};
use crate::perfetto_trace::{EventType, TraceWriter, Track, Value};
use crate::shadow_stack::{CallSites, ShadowStacks};
use crate::stream::{icount_range, sorted_window, window_rows, windows};
use crate::symbols::Symbols;
use trace_format::memory_map::MemoryMap;

/// What the trace says its timestamps are.
pub const TIMESTAMPS: &str = "timestamps: 1 ns = 1 guest instruction (icount) of the vCPU";

/// The debug annotations the events carry.
const ANNOTATIONS: &[&str] = &[
    "offset",
    "paddr",
    "value",
    "value_hi",
    "size",
    "pc",
    "vcpu",
    "symbol",
    "entry",
    "call_site",
    "capture",
    "qemu_command",
    "events",
];

const ROOT_TRACK: u64 = 1;
const CAPTURE_TRACK: u64 = 2;
fn vcpu_track(vcpu: u32) -> u64 {
    0x1_0000_0000 + u64::from(vcpu)
}
fn device_track(index: usize) -> u64 {
    0x2_0000_0000 + index as u64
}

/// Where the function slices came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Functions {
    /// The shadow call stack over `insn` and `code`.
    ShadowStack,
    /// No `insn` table: no vCPU tracks.
    NoInsnTable,
    /// `insn` but no `code` (no disassembly to find calls in): vCPU tracks
    /// without slices.
    NoCodeTable,
}

/// What [`perfetto`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerfettoReport {
    /// Device name -> MMIO events on its track.
    pub devices: BTreeMap<String, u64>,
    /// vCPU -> function slices on its track.
    pub vcpus: BTreeMap<u32, u64>,
    pub functions: Functions,
    /// Whether the MMIO events are named by register offset (the capture
    /// has an `mtree.txt`), or by physical address.
    pub register_offsets: bool,
    /// Why `mtree.txt` could not be used, when it is there but unreadable.
    pub mtree_problem: Option<String>,
    pub packets: u64,
}

/// Writes the capture as a Perfetto trace to `w`; `symbols` names the
/// functions and the MMIO events' pcs.
pub fn perfetto(
    cap: &Capture,
    w: &mut dyn Write,
    symbols: Option<&Symbols>,
) -> Result<PerfettoReport> {
    perfetto_windowed(cap, w, symbols, window_rows())
}

/// [`perfetto`] reading about `window_rows` rows of `mmio` and of `insn` at
/// a time.
pub fn perfetto_windowed(
    cap: &Capture,
    w: &mut dyn Write,
    symbols: Option<&Symbols>,
    window_rows: u64,
) -> Result<PerfettoReport> {
    let has_mmio = cap.has_table("mmio");
    let has_insn = cap.has_table("insn");
    if !has_mmio && !has_insn {
        bail!(
            "perfetto needs the 'mmio' table (record mmio or mem) or the 'insn' table (record \
             insn), and the capture in {} has neither (tables: {})",
            cap.dir().display(),
            cap.table_names().join(", ")
        );
    }
    let functions = if !has_insn {
        Functions::NoInsnTable
    } else if !cap.has_table("code") {
        Functions::NoCodeTable
    } else {
        Functions::ShadowStack
    };
    let devices = if has_mmio {
        distinct_devices(cap)?
    } else {
        Vec::new()
    };
    let vcpus = if has_insn {
        distinct_vcpus(cap)?
    } else {
        Vec::new()
    };
    let (offsets, mtree_problem) = region_offsets(cap);
    let sites = match functions {
        Functions::ShadowStack => Some(CallSites::read(cap)?),
        _ => None,
    };

    let mut trace = TraceWriter::new(w, ANNOTATIONS);
    let mut report = PerfettoReport {
        devices: devices.iter().map(|d| (d.clone(), 0)).collect(),
        vcpus: vcpus.iter().map(|&v| (v, 0)).collect(),
        functions,
        register_offsets: offsets.is_some(),
        mtree_problem,
        packets: 0,
    };
    write_tracks(cap, &mut trace, &devices, &vcpus)?;

    let mmio_range = if has_mmio {
        icount_range(cap, "mmio", None)?
    } else {
        None
    };
    let insn_range = if has_insn {
        icount_range(cap, "insn", None)?
    } else {
        None
    };
    let range = match (mmio_range, insn_range) {
        (Some(a), Some(b)) => Some(a.union(b)),
        (a, b) => a.or(b),
    };
    write_capture_event(cap, &mut trace, range.map_or(0, |r| r.lo))?;
    let Some(range) = range else {
        report.packets = trace.packets();
        trace.flush()?;
        return Ok(report);
    };

    let mut mmio = MmioEvents {
        tracks: devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.as_str(), device_track(i)))
            .collect(),
        offsets: offsets.as_ref(),
        symbols,
        digits: cap.ptr_digits(),
        counts: HashMap::new(),
    };
    // Without a call instruction in `code` there is no slice to make: the
    // instructions are not read.
    let mut calls = sites
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(|s| FunctionSlices::new(s, symbols, cap.ptr_digits()));
    for win in windows(range, window_rows) {
        // Both tables' rows of the window, merged by (icount, vcpu).
        let accesses = match mmio_range {
            Some(_) => Some(sorted_window(cap, "mmio", win, None, &mmio_cols())?),
            None => None,
        };
        let mut acc = AccessCursor::new(accesses.as_ref())?;
        if let (Some(calls), Some(_)) = (calls.as_mut(), insn_range) {
            let df = sorted_window(cap, "insn", win, None, &insn_cols())?;
            let vcpu = df.column("vcpu")?.u32()?;
            let icount = df.column("icount")?.u64()?;
            let pc = df.column("pc")?.u64()?;
            let block = df.column("block")?.u64()?;
            for i in 0..df.height() {
                let (Some(v), Some(ic)) = (vcpu.get(i), icount.get(i)) else {
                    continue;
                };
                acc.write_before((ic, v), &mut mmio, &mut trace)?;
                calls.instruction(&mut trace, v, ic, pc.get(i), block.get(i))?;
            }
        }
        acc.write_before((u64::MAX, u32::MAX), &mut mmio, &mut trace)?;
    }
    if let Some(calls) = calls.as_mut() {
        calls.close_all(&mut trace)?;
        for (&v, &n) in &calls.slices {
            report.vcpus.insert(v, n);
        }
    }
    for (d, n) in mmio.counts {
        report.devices.insert(d, n);
    }
    report.packets = trace.packets();
    trace.flush()?;
    Ok(report)
}

fn mmio_cols() -> [Expr; 9] {
    [
        col("vcpu").cast(DataType::UInt32),
        col("icount").cast(DataType::UInt64),
        col("pc").cast(DataType::UInt64),
        col("type"),
        col("paddr").cast(DataType::UInt64),
        col("size").cast(DataType::UInt8),
        col("value").cast(DataType::UInt64),
        col("value_hi").cast(DataType::UInt64),
        col("device"),
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

/// The devices of the `mmio` table (`unknown` for a null device),
/// alphabetically, counted part by part.
fn distinct_devices(cap: &Capture) -> Result<Vec<String>> {
    let mut names = std::collections::BTreeSet::new();
    for part in cap.scan_parts("mmio")? {
        let df = cap.collect(
            part.select([col("device")])
                .unique(None, UniqueKeepStrategy::Any),
        )?;
        for d in df.column("device")?.str()?.iter() {
            names.insert(d.unwrap_or(UNKNOWN_DEVICE).to_owned());
        }
    }
    Ok(names.into_iter().collect())
}

/// The vCPUs that executed instructions, in order, read part by part from
/// `block_exec` (or a version 1 capture's `insn` table).
fn distinct_vcpus(cap: &Capture) -> Result<Vec<u32>> {
    let table = if cap.is_view("insn") {
        "block_exec"
    } else {
        "insn"
    };
    let mut vcpus = std::collections::BTreeSet::new();
    for part in cap.scan_parts(table)? {
        let df = cap.collect(
            part.select([col("vcpu").cast(DataType::UInt32)])
                .unique(None, UniqueKeepStrategy::Any),
        )?;
        vcpus.extend(df.column("vcpu")?.u32()?.iter().flatten());
    }
    Ok(vcpus.into_iter().collect())
}

/// The capture's register offsets, from its `mtree.txt`; None (and why,
/// when the file is there but unusable) without.
fn region_offsets(cap: &Capture) -> (Option<MemoryMap>, Option<String>) {
    match cap.memory_map() {
        Ok(map) => (map, None),
        Err(e) => (None, Some(format!("{e:#}"))),
    }
}

fn write_tracks(
    cap: &Capture,
    trace: &mut TraceWriter,
    devices: &[String],
    vcpus: &[u32],
) -> Result<()> {
    let dir_name = cap
        .dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| cap.dir().display().to_string());
    let root_name = format!("QEMU capture {dir_name} (1 ns = 1 guest instruction)");
    let root_description = format!(
        "trace-collector capture {}. {TIMESTAMPS}: an event at icount N of its vCPU is at \
         N ns; each vCPU counts its own instructions.",
        cap.dir().display()
    );
    trace.track(&Track {
        uuid: ROOT_TRACK,
        name: &root_name,
        description: Some(&root_description),
        parent: None,
        rank: None,
        orders_children: true,
    })?;
    trace.track(&Track {
        uuid: CAPTURE_TRACK,
        name: "capture",
        description: Some(TIMESTAMPS),
        parent: Some(ROOT_TRACK),
        rank: Some(0),
        orders_children: false,
    })?;
    for (i, &v) in vcpus.iter().enumerate() {
        let name = format!("vCPU {v} functions");
        let description = format!(
            "Function calls of vCPU {v}, from the callee's first instruction to the \
             instruction at the return address ({TIMESTAMPS})"
        );
        trace.track(&Track {
            uuid: vcpu_track(v),
            name: &name,
            description: Some(&description),
            parent: Some(ROOT_TRACK),
            rank: Some(1 + i as i32),
            orders_children: false,
        })?;
    }
    for (i, d) in devices.iter().enumerate() {
        let name = format!("MMIO {d}");
        let description = format!("Accesses to device {d}, one instant each ({TIMESTAMPS})");
        trace.track(&Track {
            uuid: device_track(i),
            name: &name,
            description: Some(&description),
            parent: Some(ROOT_TRACK),
            rank: Some(1 + vcpus.len() as i32 + i as i32),
            orders_children: false,
        })?;
    }
    Ok(())
}

/// The instant that says what the timestamps are, with what the capture is.
fn write_capture_event(cap: &Capture, trace: &mut TraceWriter, ts: u64) -> Result<()> {
    let dir = cap.dir().display().to_string();
    let command = cap
        .meta()
        .map(|m| m.qemu_command.join(" "))
        .unwrap_or_default();
    let events = cap.meta().map(|m| m.events.clone()).unwrap_or_default();
    trace.event(
        ts,
        CAPTURE_TRACK,
        EventType::Instant,
        Some(TIMESTAMPS),
        &[
            ("capture", Value::Str(&dir)),
            ("qemu_command", Value::Str(&command)),
            ("events", Value::Str(&events)),
        ],
    )
}

/// Turns `mmio` rows into instants on the device tracks.
struct MmioEvents<'a> {
    tracks: HashMap<&'a str, u64>,
    offsets: Option<&'a MemoryMap>,
    symbols: Option<&'a Symbols>,
    digits: usize,
    counts: HashMap<String, u64>,
}

/// One row of `mmio`.
struct Access<'a> {
    vcpu: u32,
    icount: u64,
    pc: u64,
    write: bool,
    paddr: u64,
    size: u8,
    value: u64,
    value_hi: Option<u64>,
    device: &'a str,
}

impl MmioEvents<'_> {
    fn write(&mut self, a: &Access, trace: &mut TraceWriter) -> Result<()> {
        let Some(&track) = self.tracks.get(a.device) else {
            bail!(
                "device {:?} appeared in mmio after the tracks were listed (is the capture \
                 being written?)",
                a.device
            );
        };
        let kind = if a.write { "write" } else { "read" };
        let offset = self.offsets.and_then(|o| o.offset(a.paddr));
        let name = match offset {
            Some(off) => format!("{kind} {off:#x}"),
            None => format!("{kind} @{:#0w$x}", a.paddr, w = self.digits + 2),
        };
        let symbol = self.symbols.map(|s| s.name(a.pc).unwrap_or_default());
        let mut ann: Vec<(&'static str, Value)> = Vec::with_capacity(9);
        if let Some(off) = offset {
            ann.push(("offset", Value::Pointer(off)));
        }
        ann.push(("paddr", Value::Pointer(a.paddr)));
        ann.push(("value", Value::Pointer(a.value)));
        if let Some(hi) = a.value_hi {
            ann.push(("value_hi", Value::Pointer(hi)));
        }
        ann.push(("size", Value::Uint(u64::from(a.size))));
        ann.push(("pc", Value::Pointer(a.pc)));
        ann.push(("vcpu", Value::Uint(u64::from(a.vcpu))));
        if let Some(s) = &symbol {
            ann.push(("symbol", Value::Str(s)));
        }
        trace.event(a.icount, track, EventType::Instant, Some(&name), &ann)?;
        match self.counts.get_mut(a.device) {
            Some(n) => *n += 1,
            None => {
                self.counts.insert(a.device.to_owned(), 1);
            }
        }
        Ok(())
    }
}

/// A cursor over a window's `mmio` rows, sorted by (icount, vcpu).
struct AccessCursor<'a> {
    next: usize,
    cols: Option<AccessCols<'a>>,
}

struct AccessCols<'a> {
    n: usize,
    vcpu: &'a UInt32Chunked,
    icount: &'a UInt64Chunked,
    pc: &'a UInt64Chunked,
    ty: &'a StringChunked,
    paddr: &'a UInt64Chunked,
    size: &'a UInt8Chunked,
    value: &'a UInt64Chunked,
    value_hi: &'a UInt64Chunked,
    device: &'a StringChunked,
}

impl<'a> AccessCursor<'a> {
    fn new(df: Option<&'a DataFrame>) -> Result<Self> {
        let cols = match df {
            None => None,
            Some(df) => Some(AccessCols {
                n: df.height(),
                vcpu: df.column("vcpu")?.u32()?,
                icount: df.column("icount")?.u64()?,
                pc: df.column("pc")?.u64()?,
                ty: df.column("type")?.str()?,
                paddr: df.column("paddr")?.u64()?,
                size: df.column("size")?.u8()?,
                value: df.column("value")?.u64()?,
                value_hi: df.column("value_hi")?.u64()?,
                device: df.column("device")?.str()?,
            }),
        };
        Ok(AccessCursor { next: 0, cols })
    }

    /// Writes the accesses before `key` (icount, vcpu) not written yet.
    fn write_before(
        &mut self,
        key: (u64, u32),
        events: &mut MmioEvents,
        trace: &mut TraceWriter,
    ) -> Result<()> {
        let Some(c) = &self.cols else { return Ok(()) };
        while self.next < c.n {
            let i = self.next;
            let a = Access {
                vcpu: c.vcpu.get(i).unwrap_or(0),
                icount: c.icount.get(i).unwrap_or(0),
                pc: c.pc.get(i).unwrap_or(0),
                write: c.ty.get(i) == Some("W"),
                paddr: c.paddr.get(i).unwrap_or(0),
                size: c.size.get(i).unwrap_or(0),
                value: c.value.get(i).unwrap_or(0),
                value_hi: c.value_hi.get(i),
                device: c.device.get(i).unwrap_or(UNKNOWN_DEVICE),
            };
            if (a.icount, a.vcpu) >= key {
                break;
            }
            events.write(&a, trace)?;
            self.next += 1;
        }
        Ok(())
    }
}

/// Turns the executed instructions into function slices on the vCPU
/// tracks, through the shadow call stack.
struct FunctionSlices<'a> {
    sites: &'a CallSites,
    symbols: Option<&'a Symbols>,
    digits: usize,
    stacks: ShadowStacks,
    /// vCPU -> the pc of a call whose callee's first instruction is next.
    pending: HashMap<u32, u64>,
    /// vCPU -> slices begun and not ended.
    open: HashMap<u32, u64>,
    /// vCPU -> its last instruction's icount.
    last_icount: HashMap<u32, u64>,
    /// vCPU -> slices begun.
    slices: BTreeMap<u32, u64>,
}

impl<'a> FunctionSlices<'a> {
    fn new(sites: &'a CallSites, symbols: Option<&'a Symbols>, digits: usize) -> Self {
        FunctionSlices {
            sites,
            symbols,
            digits,
            stacks: ShadowStacks::default(),
            pending: HashMap::new(),
            open: HashMap::new(),
            last_icount: HashMap::new(),
            slices: BTreeMap::new(),
        }
    }

    /// vCPU `v` executes the instruction at `pc` (of translated block
    /// `block`) at `icount`. The order is bufmon's: a call's callee starts
    /// at the next instruction; reaching a return address ends the calls
    /// it returns from; then this instruction's own call is pushed.
    fn instruction(
        &mut self,
        trace: &mut TraceWriter,
        v: u32,
        icount: u64,
        pc: Option<u64>,
        block: Option<u64>,
    ) -> Result<()> {
        self.last_icount.insert(v, icount);
        let Some(pc) = pc else {
            return Ok(()); // a block whose description never arrived
        };
        if let Some(call_site) = self.pending.remove(&v) {
            let name = match self.symbols.and_then(|s| s.name(pc)) {
                Some(n) => n,
                None => format!("{:#0w$x}", pc, w = self.digits + 2),
            };
            trace.event(
                icount,
                vcpu_track(v),
                EventType::SliceBegin,
                Some(&name),
                &[
                    ("entry", Value::Pointer(pc)),
                    ("call_site", Value::Pointer(call_site)),
                ],
            )?;
            *self.open.entry(v).or_default() += 1;
            *self.slices.entry(v).or_default() += 1;
        }
        if self.sites.is_return_address(pc) {
            let returned = self.stacks.reach(v, pc) as u64;
            let open = self.open.entry(v).or_default();
            // A call of the vCPU's last instruction has no slice yet; so
            // never end more slices than are open.
            let ends = returned.min(*open);
            *open -= ends;
            for _ in 0..ends {
                trace.event(icount, vcpu_track(v), EventType::SliceEnd, None, &[])?;
            }
        }
        if let Some(ret) = block.and_then(|b| self.sites.return_address(b, pc)) {
            self.stacks.call(v, ret);
            self.pending.insert(v, pc);
        }
        Ok(())
    }

    /// Ends the slices still open when the capture ends, after each vCPU's
    /// last instruction.
    fn close_all(&mut self, trace: &mut TraceWriter) -> Result<()> {
        let mut open: Vec<(u32, u64)> = self.open.iter().map(|(&v, &n)| (v, n)).collect();
        open.sort_unstable();
        for (v, n) in open {
            let end = self.last_icount.get(&v).map_or(0, |&ic| ic + 1);
            for _ in 0..n {
                trace.event(end, vcpu_track(v), EventType::SliceEnd, None, &[])?;
            }
        }
        self.open.clear();
        Ok(())
    }
}
