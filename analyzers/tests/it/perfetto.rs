//! `perfetto` on a synthetic capture with nested calls, calls that never
//! return and devices inside and outside the memory map, read back with
//! Perfetto's compiled protos (tests/perfetto/check_trace.py; scripts/setup.sh
//! installs them), and the same bytes whatever the window size.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use trace_analyzers::{perfetto, symbols::Symbols, Capture};

use crate::common::*;

/// vCPU 0: main (0x100) calls outer (0x200), which calls inner (0x300)
/// and returns with `pop {pc}`; main then calls inner again. vCPU 1: cpu1
/// (0x400) calls spin (0x500), which never returns.
fn code() -> Vec<Code> {
    vec![
        (1, 0, 0x100, 4, 0xf000f87e, "bl #0x200"),
        (2, 0, 0x200, 2, 0xb500, "push {lr}"),
        (2, 1, 0x202, 4, 0xf000f87d, "bl #0x300"),
        (3, 0, 0x300, 2, 0x6808, "ldr r0, [r1]"),
        (3, 1, 0x302, 2, 0x4770, "bx lr"),
        (4, 0, 0x206, 2, 0xbd00, "pop {pc}"),
        (5, 0, 0x104, 2, 0xbf00, "nop"),
        (5, 1, 0x106, 4, 0xf000f8fb, "bl #0x300"),
        (6, 0, 0x10a, 2, 0xe7fe, "b #0x10a"),
        (7, 0, 0x400, 4, 0xf000f87e, "bl #0x500"),
        (8, 0, 0x500, 2, 0xe7fe, "b #0x500"),
    ]
}

/// (vcpu, icount, block, insns)
fn block_exec() -> Vec<(u32, u64, u64, u32)> {
    vec![
        (0, 0, 1, 1),  // 0x100 bl outer
        (0, 1, 2, 2),  // 0x200, 0x202 bl inner
        (0, 3, 3, 2),  // 0x300 (reads uart0), 0x302 bx lr
        (0, 5, 4, 1),  // 0x206 pop {pc}
        (0, 6, 5, 2),  // 0x104, 0x106 bl inner
        (0, 8, 3, 2),  // 0x300 (reads uart0), 0x302
        (0, 10, 6, 1), // 0x10a
        (1, 0, 7, 1),  // 0x400 bl spin
        (1, 1, 8, 1),  // 0x500
        (1, 2, 8, 1),
        (1, 3, 8, 1),
    ]
}

const MTREE: &str = "\
FlatView #0
 AS \"cpu-memory-0\", root: armv7m-container
 Root memory region: armv7m-container
  000000004000c000-000000004000cfff (prio 0, i/o): pl011
";

const SYSTEM_MAP: &str = "\
00000100 T main
00000200 T outer
00000300 T inner
00000400 T cpu1
00000500 T spin
";

fn nested_capture(dir: &Path) {
    write_meta(dir, 32, true);
    write_part(dir, "block_exec", 0, &mut block_exec_df(&block_exec()));
    write_part(dir, "code", 0, &mut code_df(&code()));
    let mmio = vec![
        io(3, 0x300, "R", 0x4000_c018, 0x90, "uart0"),
        io(8, 0x300, "R", 0x4000_c018, 0x10, "uart0"),
        Mem {
            vcpu: 1,
            ..io(2, 0x500, "W", 0x5000_0004, 7, "mystery")
        },
    ];
    write_part(dir, "mmio", 0, &mut mmio_df(&mmio));
    std::fs::write(dir.join("mtree.txt"), MTREE).unwrap();
}

fn export(cap: &Capture, symbols: Option<&Symbols>, window_rows: u64) -> Vec<u8> {
    let mut out = Vec::new();
    perfetto::perfetto_windowed(cap, &mut out, symbols, window_rows).unwrap();
    out
}

/// check_trace.py's reading of `trace`.
fn decode(trace: &[u8], dir: &Path) -> Value {
    let file = dir.join("trace.perfetto-trace");
    std::fs::write(&file, trace).unwrap();
    // The checkout being tested, from cargo at run time: a test binary
    // reused from another clone's build has another path compiled in.
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let python = PathBuf::from(std::env::var_os("HOME").unwrap())
        .join(".cache/trace-collector/python/perfetto-0.59.1");
    assert!(
        python.join("perfetto").is_dir(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    let o = Command::new("python3")
        .arg(root.join("tests/perfetto/check_trace.py"))
        .arg(&file)
        .env("PYTHONPATH", python)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// (track name, slice name, begin, end, depth) of every slice.
fn slices(d: &Value) -> Vec<(String, String, u64, u64, u64)> {
    let track_name = |uuid: &Value| {
        d["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| &t["uuid"] == uuid)
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    d["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                track_name(&s["track"]),
                s["name"].as_str().unwrap().to_string(),
                s["begin"].as_u64().unwrap(),
                s["end"].as_u64().unwrap(),
                s["depth"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn nested_calls_are_nested_slices() {
    let t = TmpDir::new("perfetto");
    nested_capture(t.path());
    let cap = Capture::open(t.path()).unwrap();
    let map = t.path().join("System.map");
    std::fs::write(&map, SYSTEM_MAP).unwrap();
    let symbols = Symbols::load(&map).unwrap();

    let named = export(&cap, Some(&symbols), 1_000_000);
    let plain = export(&cap, None, 1_000_000);
    for rows in 1..=5 {
        assert_eq!(
            export(&cap, Some(&symbols), rows),
            named,
            "windows of {rows}"
        );
    }

    let s = |track: &str, name: &str, begin, end, depth| {
        (track.to_string(), name.to_string(), begin, end, depth)
    };
    // outer from its first instruction (1) to main's 0x104 (6); inner
    // inside it (3 to outer's 0x206, 5); inner again from main (8 to
    // 0x10a, 10); spin never returns: open until after vCPU 1's last
    // instruction (3).
    assert_eq!(
        slices(&decode(&named, t.path())),
        [
            s("vCPU 0 functions", "outer", 1, 6, 0),
            s("vCPU 0 functions", "inner", 3, 5, 1),
            s("vCPU 0 functions", "inner", 8, 10, 0),
            s("vCPU 1 functions", "spin", 1, 4, 0),
        ]
    );
    let d = decode(&plain, t.path());
    assert_eq!(
        slices(&d),
        [
            s("vCPU 0 functions", "0x00000200", 1, 6, 0),
            s("vCPU 0 functions", "0x00000300", 3, 5, 1),
            s("vCPU 0 functions", "0x00000300", 8, 10, 0),
            s("vCPU 1 functions", "0x00000500", 1, 4, 0),
        ]
    );

    // MMIO: by register offset inside the memory map, by physical address
    // outside it.
    let instants: Vec<(u64, String, u64)> = d["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["args"].get("paddr").is_some())
        .map(|e| {
            (
                e["ts"].as_u64().unwrap(),
                e["name"].as_str().unwrap().to_string(),
                e["args"]["vcpu"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        instants,
        [
            (2, "write @0x50000004".to_string(), 1),
            (3, "read 0x18".to_string(), 0),
            (8, "read 0x18".to_string(), 0),
        ]
    );
}
