//! Synthetic capture directories, written with polars in the schemas of
//! docs/capture-format.md.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use polars::prelude::*;

/// A temporary directory removed on drop.
pub struct TmpDir(pub PathBuf);

impl TmpDir {
    pub fn new(tag: &str) -> TmpDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "trace-analyzers-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TmpDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone)]
pub struct Mem {
    pub vcpu: u32,
    pub icount: u64,
    pub pc: u64,
    pub ty: &'static str,
    pub vaddr: u64,
    pub paddr: u64,
    pub size: u8,
    pub value: u64,
    pub value_hi: Option<u64>,
    pub asid: u64,
    pub device: Option<&'static str>,
}

/// A RAM access.
#[allow(clippy::too_many_arguments)]
pub fn ram(
    vcpu: u32,
    icount: u64,
    pc: u64,
    ty: &'static str,
    vaddr: u64,
    paddr: u64,
    size: u8,
    value: u64,
) -> Mem {
    Mem {
        vcpu,
        icount,
        pc,
        ty,
        vaddr,
        paddr,
        size,
        value,
        value_hi: None,
        asid: 0,
        device: None,
    }
}

/// An MMIO access (vaddr = paddr).
pub fn io(icount: u64, pc: u64, ty: &'static str, addr: u64, value: u64, dev: &'static str) -> Mem {
    Mem {
        vcpu: 0,
        icount,
        pc,
        ty,
        vaddr: addr,
        paddr: addr,
        size: 4,
        value,
        value_hi: None,
        asid: 0,
        device: Some(dev),
    }
}

pub fn write_part(dir: &Path, table: &str, part: usize, df: &mut DataFrame) {
    let d = dir.join(table);
    std::fs::create_dir_all(&d).unwrap();
    let f = File::create(d.join(format!("part-{part:06}.parquet"))).unwrap();
    ParquetWriter::new(f).finish(df).unwrap();
}

fn mem_columns(rows: &[Mem]) -> Vec<Column> {
    vec![
        Column::new(
            "vcpu".into(),
            rows.iter().map(|r| r.vcpu).collect::<Vec<_>>(),
        ),
        Column::new(
            "icount".into(),
            rows.iter().map(|r| r.icount).collect::<Vec<_>>(),
        ),
        Column::new("pc".into(), rows.iter().map(|r| r.pc).collect::<Vec<_>>()),
        Column::new("type".into(), rows.iter().map(|r| r.ty).collect::<Vec<_>>()),
        Column::new(
            "vaddr".into(),
            rows.iter().map(|r| r.vaddr).collect::<Vec<_>>(),
        ),
        Column::new(
            "paddr".into(),
            rows.iter().map(|r| r.paddr).collect::<Vec<_>>(),
        ),
        Column::new(
            "size".into(),
            rows.iter().map(|r| r.size).collect::<Vec<_>>(),
        ),
        Column::new(
            "value".into(),
            rows.iter().map(|r| r.value).collect::<Vec<_>>(),
        ),
        Column::new(
            "value_hi".into(),
            rows.iter().map(|r| r.value_hi).collect::<Vec<_>>(),
        ),
        Column::new(
            "asid".into(),
            rows.iter().map(|r| r.asid).collect::<Vec<_>>(),
        ),
    ]
}

pub fn mem_df(rows: &[Mem]) -> DataFrame {
    let mut cols = mem_columns(rows);
    cols.push(Column::new(
        "io".into(),
        rows.iter().map(|r| r.device.is_some()).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "device".into(),
        rows.iter().map(|r| r.device).collect::<Vec<_>>(),
    ));
    DataFrame::new(rows.len(), cols).unwrap()
}

pub fn mmio_df(rows: &[Mem]) -> DataFrame {
    let mut cols = mem_columns(rows);
    cols.push(Column::new(
        "device".into(),
        rows.iter().map(|r| r.device.unwrap()).collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "plugin_device".into(),
        rows.iter()
            .map(|r| format!("anon0x5581{}", r.device.unwrap().len()))
            .collect::<Vec<_>>(),
    ));
    DataFrame::new(rows.len(), cols).unwrap()
}

/// (vcpu, icount, pc, block)
pub fn insn_df(rows: &[(u32, u64, u64, u64)]) -> DataFrame {
    DataFrame::new(
        rows.len(),
        vec![
            Column::new("vcpu".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
            Column::new(
                "icount".into(),
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            ),
            Column::new("pc".into(), rows.iter().map(|r| r.2).collect::<Vec<_>>()),
            Column::new("block".into(), rows.iter().map(|r| r.3).collect::<Vec<_>>()),
        ],
    )
    .unwrap()
}

/// (vcpu, icount, block, insns)
pub fn block_exec_df(rows: &[(u32, u64, u64, u32)]) -> DataFrame {
    DataFrame::new(
        rows.len(),
        vec![
            Column::new("vcpu".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
            Column::new(
                "icount".into(),
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            ),
            Column::new("block".into(), rows.iter().map(|r| r.2).collect::<Vec<_>>()),
            Column::new("insns".into(), rows.iter().map(|r| r.3).collect::<Vec<_>>()),
        ],
    )
    .unwrap()
}

/// (block, index, pc, size, opcode, disas)
pub type Code = (u64, u32, u64, u8, u32, &'static str);

pub fn code_df(rows: &[Code]) -> DataFrame {
    let bytes: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| r.4.to_le_bytes()[..usize::from(r.3).min(4)].to_vec())
        .collect();
    let byte_refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    DataFrame::new(
        rows.len(),
        vec![
            Column::new("block".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
            Column::new("index".into(), rows.iter().map(|r| r.1).collect::<Vec<_>>()),
            Column::new("pc".into(), rows.iter().map(|r| r.2).collect::<Vec<_>>()),
            Column::new("size".into(), rows.iter().map(|r| r.3).collect::<Vec<_>>()),
            Series::new("bytes".into(), byte_refs).into_column(),
            Column::new(
                "opcode".into(),
                rows.iter().map(|r| r.4).collect::<Vec<_>>(),
            ),
            Column::new("disas".into(), rows.iter().map(|r| r.5).collect::<Vec<_>>()),
            Column::new("symbol".into(), rows.iter().map(|_| "").collect::<Vec<_>>()),
        ],
    )
    .unwrap()
}

/// (name, vcpu, value)
pub fn stats_df(rows: &[(&str, Option<u32>, u64)]) -> DataFrame {
    DataFrame::new(
        rows.len(),
        vec![
            Column::new("name".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
            Column::new("vcpu".into(), rows.iter().map(|r| r.1).collect::<Vec<_>>()),
            Column::new("value".into(), rows.iter().map(|r| r.2).collect::<Vec<_>>()),
        ],
    )
    .unwrap()
}

pub fn write_meta(dir: &Path, bits: u32, complete: bool) {
    let meta = serde_json::json!({
        "format_version": 2,
        "complete": complete,
        "qemu_pid": 1234,
        "qemu_command": ["qemu-system-arm", "-M", "lm3s6965evb"],
        "guest_pointer_bits": bits,
        "shim_options": "events=mem+mmio+insn,wait=on",
        "n_vcpus": 2,
        "devices": ["systick", "uart0"],
        "qemu_exit": "exited with status 0",
        "tables": {},
    });
    std::fs::write(dir.join("capture.json"), meta.to_string()).unwrap();
}

pub const BUF: u64 = 0x2000_0100;

/// The reference program (32-bit ARM, two vCPUs). vCPU 0 calls a function
/// at 0x200 from 0x104 (return address 0x108) that touches the buffer
/// [0x20000100, 0x20000110); vCPU 1 stores into the buffer too.
pub fn code_rows() -> Vec<Code> {
    vec![
        (1, 0, 0x100, 4, 0xe92d4010, "push {r4, lr}"),
        (1, 1, 0x104, 4, 0xeb00003d, "bl #0x200"),
        (2, 0, 0x200, 2, 0x6812, "ldr r2, [r3]"),
        (2, 1, 0x202, 2, 0x6022, "str r2, [r4]"),
        (2, 2, 0x204, 2, 0x6835, "ldr r5, [r6]"),
        (2, 3, 0x206, 4, 0x0a20f960, "vld1.8 {d0, d1}, [r0]"),
        (2, 4, 0x20a, 2, 0x4770, "bx lr"),
        (3, 0, 0x108, 4, 0xe5910000, "ldr r0, [r1]"),
        (3, 1, 0x10c, 4, 0xe5870000, "str r0, [r7]"),
        (3, 2, 0x110, 4, 0xe5921000, "ldr r1, [r2]"),
        (3, 3, 0x114, 4, 0xe5821000, "str r1, [r2]"),
        (3, 4, 0x118, 4, 0xe5943000, "ldr r3, [r4]"),
        (3, 5, 0x11c, 4, 0xe5910000, "ldr r0, [r1]"),
        (4, 0, 0x400, 4, 0xe1a00000, "mov r0, r0"),
        (4, 1, 0x404, 4, 0xe1a00000, "mov r0, r0"),
        (4, 2, 0x408, 4, 0xe1a00000, "mov r0, r0"),
        (4, 3, 0x40c, 4, 0xe5810000, "str r0, [r1]"),
    ]
}

pub fn insn_rows() -> Vec<(u32, u64, u64, u64)> {
    let v0 = [
        (0x100, 1),
        (0x104, 1),
        (0x200, 2),
        (0x202, 2),
        (0x204, 2),
        (0x206, 2),
        (0x20a, 2),
        (0x108, 3),
        (0x10c, 3),
        (0x110, 3),
        (0x114, 3),
        (0x118, 3),
        (0x11c, 3),
    ];
    let mut rows: Vec<_> = v0
        .iter()
        .enumerate()
        .map(|(i, &(pc, b))| (0u32, i as u64, pc, b))
        .collect();
    for i in 0..4u64 {
        rows.push((1, i, 0x400 + 4 * i, 4));
    }
    rows
}

/// The block executions `insn_rows` are made of: (vcpu, icount, block,
/// insns).
pub fn block_exec_rows() -> Vec<(u32, u64, u64, u32)> {
    vec![(0, 0, 1, 2), (0, 2, 2, 5), (0, 7, 3, 6), (1, 0, 4, 4)]
}

/// mem rows, split in two parts (the second store of `push` is in part 1).
pub fn mem_parts() -> (Vec<Mem>, Vec<Mem>) {
    let mut p0 = vec![
        ram(0, 0, 0x100, "W", 0x2000_fff8, 0xfff8, 4, 0x4),
        ram(0, 2, 0x200, "R", BUF, BUF, 4, 0x1122_3344),
        ram(0, 3, 0x202, "W", BUF + 0xc, BUF + 0xc, 4, 0xdead_beef), // last 4 bytes
        ram(1, 3, 0x40c, "W", BUF, BUF, 4, 0x0102_0304),
        ram(0, 4, 0x204, "R", BUF - 2, BUF - 2, 4, 0xaabb_ccdd), // overlaps the first 2 bytes
    ];
    let mut wide = ram(
        0,
        5,
        0x206,
        "R",
        BUF + 4,
        BUF + 4,
        16,
        0x0706_0504_0302_0100,
    );
    wide.value_hi = Some(0x0f0e_0d0c_0b0a_0908);
    p0.push(wide);
    let mut other_asid = ram(0, 8, 0x10c, "W", BUF, 0x3000_0100, 1, 0x55);
    other_asid.asid = 1;
    let p1 = vec![
        ram(0, 0, 0x100, "W", 0x2000_fffc, 0xfffc, 4, 0x108),
        ram(0, 7, 0x108, "R", BUF + 0x10, BUF + 0x10, 4, 0x99), // one byte past the end
        other_asid,
        io(9, 0x110, "R", 0x4000_c000, 0x61, "uart0"),
        io(10, 0x114, "W", 0x4000_c000, 0x41, "uart0"),
        io(11, 0x118, "R", 0xe000_e010, 0x4, "systick"),
        ram(0, 12, 0x11c, "R", BUF + 8, BUF + 8, 2, 0xbeef),
    ];
    (p0, p1)
}

/// Writes the reference capture into `dir`.
pub fn reference_capture(dir: &Path) {
    write_meta(dir, 32, true);
    let (p0, p1) = mem_parts();
    write_part(dir, "mem", 0, &mut mem_df(&p0));
    write_part(dir, "mem", 1, &mut mem_df(&p1));
    let mmio: Vec<Mem> = p0
        .iter()
        .chain(p1.iter())
        .filter(|m| m.device.is_some())
        .cloned()
        .collect();
    write_part(dir, "mmio", 0, &mut mmio_df(&mmio));
    let blocks = block_exec_rows();
    write_part(dir, "block_exec", 0, &mut block_exec_df(&blocks[..2]));
    write_part(dir, "block_exec", 1, &mut block_exec_df(&blocks[2..]));
    write_part(dir, "code", 0, &mut code_df(&code_rows()));
    write_part(
        dir,
        "stats",
        0,
        &mut stats_df(&[
            ("events", Some(0), 30),
            ("events", Some(1), 5),
            ("events_lost", Some(0), 0),
            ("events_lost", Some(1), 0),
            ("rows.mem", None, 12),
        ]),
    );
}

pub fn reference() -> (TmpDir, trace_analyzers::Capture) {
    let t = TmpDir::new("ref");
    reference_capture(t.path());
    let cap = trace_analyzers::Capture::open(t.path()).unwrap();
    (t, cap)
}
