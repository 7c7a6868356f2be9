use trace_analyzers::{bufmon, execlog, mmio_json, timeline, Capture};

use crate::common::*;

fn run_bufmon(cap: &Capture, buffers: &str) -> (String, bufmon::BufmonReport) {
    let bufs = bufmon::parse_buffers(buffers, "search_buffers.txt").unwrap();
    let mut out = Vec::new();
    let r = bufmon::bufmon(cap, &bufs, &mut out).unwrap();
    (String::from_utf8(out).unwrap(), r)
}

#[test]
fn bufmon_exact_lines() {
    let (_t, cap) = reference();
    let (out, r) = run_bufmon(&cap, "# the buffer\n20000100 10 0\n");
    assert_eq!(r.callers, bufmon::Callers::ShadowStack);
    assert_eq!(
        out,
        "READ 2 00000108 00000200 00000000 20000100 00000004 44 33 22 11\n\
         WRITE 3 00000108 00000202 00000000 2000010c 00000004 ef be ad de\n\
         WRITE 3 00000000 0000040c 00000000 20000100 00000004 04 03 02 01\n\
         READ 4 00000108 00000204 00000000 200000fe 00000004 dd cc bb aa\n\
         READ 5 00000108 00000206 00000000 20000104 00000010 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f\n\
         READ 12 00000000 0000011c 00000000 20000108 00000002 ef be\n"
    );
    assert_eq!(r.lines, 6);
}

#[test]
fn bufmon_edges_and_asid() {
    let (_t, cap) = reference();
    // [0x200000fc, 0x20000100): only the access at 0x200000fe overlaps; the
    // ones starting at 0x20000100 miss by one byte.
    let (out, _) = run_bufmon(&cap, "0x200000fc 0x4 0x0\n");
    assert_eq!(
        out,
        "READ 4 00000108 00000204 00000000 200000fe 00000004 dd cc bb aa\n"
    );
    // asid 1 only sees its own access.
    let (out, _) = run_bufmon(&cap, "20000100 1 1\n");
    assert_eq!(
        out,
        "WRITE 8 00000000 0000010c 00000001 20000100 00000001 55\n"
    );
    // A buffer starting at the last byte of the 16-byte access.
    let (out, _) = run_bufmon(&cap, "20000113 1 0\n");
    assert!(out.starts_with("READ 5 "), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}"); // and the miss-by-one read at 0x20000110
                                                 // Several buffers: union, each access once.
    let (out, _) = run_bufmon(&cap, "20000100 4 0\n20000100 2 0\n");
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[test]
fn bufmon_without_insn_has_zero_callers() {
    let t = TmpDir::new("noinsn");
    reference_capture(t.path());
    std::fs::remove_dir_all(t.path().join("block_exec")).unwrap();
    let cap = Capture::open(t.path()).unwrap();
    let (out, r) = run_bufmon(&cap, "20000100 10 0\n");
    assert_eq!(r.callers, bufmon::Callers::NoInsnTable);
    assert_eq!(out.lines().count(), 6);
    assert!(
        out.lines().all(|l| l.split(' ').nth(2) == Some("00000000")),
        "{out}"
    );
}

#[test]
fn bufmon_64bit_pointer_width() {
    let t = TmpDir::new("bits64");
    reference_capture(t.path());
    write_meta(t.path(), 64, true);
    let cap = Capture::open(t.path()).unwrap();
    let (out, _) = run_bufmon(&cap, "20000100 1 1\n");
    assert_eq!(
        out,
        "WRITE 8 0000000000000000 000000000000010c 0000000000000001 0000000020000100 \
         0000000000000001 55\n"
    );
}

#[test]
fn mmio_json_exact_text() {
    let (_t, cap) = reference();
    let mut out = Vec::new();
    let n = mmio_json::mmio_json(&cap, &mut out).unwrap();
    assert_eq!(n, 3);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        "[\n\
{ \"type\": \"R\", \"guest_pc\": \"0x00000110\", \"phys_addr\": \"0x4000c000\", \"virt_addr\": \"0x4000c000\", \"size\": \"0x00000004\", \"value\": \"0x00000061\", \"device\": \"uart0\" },\n\
{ \"type\": \"W\", \"guest_pc\": \"0x00000114\", \"phys_addr\": \"0x4000c000\", \"virt_addr\": \"0x4000c000\", \"size\": \"0x00000004\", \"value\": \"0x00000041\", \"device\": \"uart0\" },\n\
{ \"type\": \"R\", \"guest_pc\": \"0x00000118\", \"phys_addr\": \"0xe000e010\", \"virt_addr\": \"0xe000e010\", \"size\": \"0x00000004\", \"value\": \"0x00000004\", \"device\": \"systick\" }\n\
]\n"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
}

#[test]
fn mmio_json_empty_is_valid_json() {
    let t = TmpDir::new("emptymmio");
    write_meta(t.path(), 32, true);
    write_part(t.path(), "mmio", 0, &mut mmio_df(&[]));
    let cap = Capture::open(t.path()).unwrap();
    let mut out = Vec::new();
    assert_eq!(mmio_json::mmio_json(&cap, &mut out).unwrap(), 0);
    assert_eq!(String::from_utf8(out).unwrap(), "[\n]\n");
}

#[test]
fn execlog_exact_lines() {
    let (_t, cap) = reference();
    let mut out = Vec::new();
    let r = execlog::execlog(&cap, &mut out).unwrap();
    assert_eq!(r.missing_code, 0);
    assert_eq!(r.lines, 17);
    let text = String::from_utf8(out).unwrap();
    let expected = r#"0, 0x100, 0xe92d4010, "push {r4, lr}", store, 0x0000fff8, RAM, store, 0x0000fffc, RAM
1, 0x400, 0xe1a00000, "mov r0, r0"
0, 0x104, 0xeb00003d, "bl #0x200"
1, 0x404, 0xe1a00000, "mov r0, r0"
0, 0x200, 0x6812, "ldr r2, [r3]", load, 0x20000100, RAM
1, 0x408, 0xe1a00000, "mov r0, r0"
0, 0x202, 0x6022, "str r2, [r4]", store, 0x2000010c, RAM
1, 0x40c, 0xe5810000, "str r0, [r1]", store, 0x20000100, RAM
0, 0x204, 0x6835, "ldr r5, [r6]", load, 0x200000fe, RAM
0, 0x206, 0xa20f960, "vld1.8 {d0, d1}, [r0]", load, 0x20000104, RAM
0, 0x20a, 0x4770, "bx lr"
0, 0x108, 0xe5910000, "ldr r0, [r1]", load, 0x20000110, RAM
0, 0x10c, 0xe5870000, "str r0, [r7]", store, 0x30000100, RAM
0, 0x110, 0xe5921000, "ldr r1, [r2]", load, 0x4000c000, uart0
0, 0x114, 0xe5821000, "str r1, [r2]", store, 0x4000c000, uart0
0, 0x118, 0xe5943000, "ldr r3, [r4]", load, 0xe000e010, systick
0, 0x11c, 0xe5910000, "ldr r0, [r1]", load, 0x20000108, RAM
"#;
    assert_eq!(text, expected);
}

#[test]
fn small_windows_same_output() {
    // The streaming path (many icount windows) gives the same text.
    let (_t, cap) = reference();
    let mut a = Vec::new();
    execlog::execlog(&cap, &mut a).unwrap();
    for rows in [1, 2, 3, 5] {
        let mut b = Vec::new();
        execlog::execlog_windowed(&cap, &mut b, rows).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            "{rows}"
        );
    }
    let bufs = bufmon::parse_buffers("20000100 10 0\n", "b").unwrap();
    let mut a = Vec::new();
    bufmon::bufmon(&cap, &bufs, &mut a).unwrap();
    for rows in [1, 2, 3] {
        let mut b = Vec::new();
        bufmon::bufmon_windowed(&cap, &bufs, &mut b, rows).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            "{rows}"
        );
    }
    for rows in [1, 2] {
        let mut a = Vec::new();
        mmio_json::mmio_json(&cap, &mut a).unwrap();
        let mut b = Vec::new();
        mmio_json::mmio_json_windowed(&cap, &mut b, rows, mmio_json::PhysAddr::Absolute).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            "{rows}"
        );
    }
    let range = trace_analyzers::stream::icount_range(&cap, "insn", None)
        .unwrap()
        .unwrap();
    assert_eq!((range.lo, range.hi, range.rows), (0, 12, 17));
    let windows = trace_analyzers::stream::windows(range, 3).len();
    assert!(windows > 3, "{windows}");
}

#[test]
fn timeline_one_lane_per_device() {
    let (_t, cap) = reference();
    let mut out = Vec::new();
    let r = timeline::timeline(&cap, &mut out).unwrap();
    assert_eq!(r.lanes, vec!["systick".to_string(), "uart0".to_string()]);
    assert_eq!(r.accesses, 3);
    let svg = String::from_utf8(out).unwrap();
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<g class=\"lane\"").count(), 2);
    assert!(svg.contains("data-device=\"uart0\""));
    assert!(svg.contains(">systick</text>"));
    assert!(svg.contains("R 1 / W 1"));
    assert!(svg.contains("fill=\"#1f77b4\"") && svg.contains("fill=\"#d62728\""));
}

#[test]
fn timeline_many_accesses_stay_small() {
    let t = TmpDir::new("bigtl");
    write_meta(t.path(), 32, true);
    let devs = ["uart0", "systick", "gpio"];
    let rows: Vec<Mem> = (0..300_000u64)
        .map(|i| {
            io(
                i * 3,
                0x100,
                if i % 3 == 0 { "W" } else { "R" },
                0x4000_0000,
                i,
                devs[(i % 3) as usize],
            )
        })
        .collect();
    write_part(t.path(), "mmio", 0, &mut mmio_df(&rows));
    let cap = Capture::open(t.path()).unwrap();
    let mut out = Vec::new();
    let r = timeline::timeline(&cap, &mut out).unwrap();
    assert_eq!(r.accesses, 300_000);
    assert_eq!(r.lanes.len(), 3);
    assert!(out.len() < 1_000_000, "{} bytes", out.len());
}

#[test]
fn execlog_null_pc_and_unknown_device() {
    use polars::prelude::*;
    let t = TmpDir::new("nulls");
    write_meta(t.path(), 32, true);
    write_part(t.path(), "code", 0, &mut code_df(&code_rows()[..1]));
    // icount 1 belongs to a block whose description never arrived: null pc.
    write_part(
        t.path(),
        "block_exec",
        0,
        &mut block_exec_df(&[(0, 0, 1, 1), (0, 1, 99, 1)]),
    );
    let mut m = io(1, 0, "R", 0x4000_0000, 1, "x");
    m.device = None;
    let mut mem = mem_df(&[m]);
    // io = true, device null
    mem.with_column(Column::new("io".into(), [true])).unwrap();
    write_part(t.path(), "mem", 0, &mut mem);
    let cap = Capture::open(t.path()).unwrap();
    let mut out = Vec::new();
    let r = execlog::execlog(&cap, &mut out).unwrap();
    assert_eq!(r.missing_code, 1);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "0, 0x100, 0xe92d4010, \"push {r4, lr}\"\n\
         0, 0x0, 0x0, \"\", load, 0x40000000, unknown\n"
    );
}

/// A capture of an older version holds `insn` itself (one row per
/// instruction, no `block_exec`): it is read as it is.
#[test]
fn insn_table_of_older_captures_is_read_as_is() {
    use polars::prelude::*;
    let t = TmpDir::new("oldinsn");
    write_meta(t.path(), 32, true);
    write_part(t.path(), "code", 0, &mut code_df(&code_rows()[..1]));
    let mut insn = DataFrame::new(
        2,
        vec![
            Column::new("vcpu".into(), [0u32, 0]),
            Column::new("icount".into(), [0u64, 1]),
            Column::new("pc".into(), [Some(0x100u64), None]),
            Column::new("block".into(), [1u64, 99]),
        ],
    )
    .unwrap();
    write_part(t.path(), "insn", 0, &mut insn);
    let cap = Capture::open(t.path()).unwrap();
    assert_eq!(cap.table_names(), ["insn", "code"]);
    let mut out = Vec::new();
    let r = execlog::execlog(&cap, &mut out).unwrap();
    assert_eq!((r.lines, r.missing_code), (2, 1));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "0, 0x100, 0xe92d4010, \"push {r4, lr}\"\n0, 0x0, 0x0, \"\"\n"
    );
}
