//! The analyzers on a real capture of the M3 test firmware
//! (tests/firmware/README.md): exact bufmon, mmio_trace JSON and execlog
//! output, and SQL answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use trace_tests::*;

/// One capture (mem, mmio, insn) shared by the tests of this file.
fn capture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = capture_dir("golden-m3");
        run_capture(&dir, &["--events", "mem,mmio,insn"], &m3_qemu());
        dir
    })
}

/// `trace-query ARGS` on the capture: (exit success, stdout, stderr).
fn dir() -> &'static str {
    capture().to_str().unwrap()
}

fn bufmon(buffers: &str) -> String {
    // One file per buffer list (tests run in parallel): named by all its
    // bytes (FNV-1a).
    let hash = buffers.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let file = capture().with_extension(format!("buffers-{hash:016x}"));
    std::fs::write(&file, buffers).unwrap();
    let (ok, out, err) = run_query(&[
        "bufmon",
        "--trace",
        dir(),
        "--buffers",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    out
}

#[test]
fn bufmon_reports_every_access_to_the_buffer_with_its_bytes() {
    let expected = "\
WRITE 35 00000000 0000005c 00000000 20000000 00000001 a0
WRITE 37 00000000 00000060 00000000 20000001 00000001 a1
WRITE 39 00000000 00000064 00000000 20000002 00000001 a2
WRITE 41 00000000 00000068 00000000 20000003 00000001 a3
WRITE 43 00000000 0000006c 00000000 20000004 00000001 a4
WRITE 45 00000000 00000070 00000000 20000005 00000001 a5
WRITE 47 00000000 00000074 00000000 20000006 00000001 a6
WRITE 49 00000000 00000078 00000000 20000007 00000001 a7
WRITE 51 00000000 0000007c 00000000 20000008 00000001 a8
WRITE 53 00000000 00000080 00000000 20000009 00000001 a9
WRITE 55 00000000 00000084 00000000 2000000a 00000001 aa
WRITE 57 00000000 00000088 00000000 2000000b 00000001 ab
WRITE 59 00000000 0000008c 00000000 2000000c 00000001 ac
WRITE 61 00000000 00000090 00000000 2000000d 00000001 ad
WRITE 63 00000000 00000094 00000000 2000000e 00000001 ae
WRITE 65 00000000 00000098 00000000 2000000f 00000001 af
WRITE 68 00000000 000000a2 00000000 20000000 00000004 00 01 02 03
WRITE 71 00000000 000000ac 00000000 20000004 00000004 04 05 06 07
WRITE 74 00000000 000000b6 00000000 20000008 00000004 08 09 0a 0b
WRITE 77 00000000 000000c0 00000000 2000000c 00000004 0c 0d 0e 0f
READ 78 00000000 000000c2 00000000 20000000 00000004 00 01 02 03
READ 79 00000000 000000c4 00000000 20000004 00000004 04 05 06 07
READ 81 00000000 000000c8 00000000 20000008 00000004 08 09 0a 0b
READ 83 00000000 000000cc 00000000 2000000c 00000004 0c 0d 0e 0f
";
    assert_eq!(bufmon("20000000 10 0\n"), expected);
}

#[test]
fn bufmon_matches_any_overlapping_byte_and_nothing_else() {
    // The last byte of buf: its byte store, and the word store and load that cover it.
    assert_eq!(
        bufmon("2000000f 1 0\n"),
        "WRITE 65 00000000 00000098 00000000 2000000f 00000001 af\n\
         WRITE 77 00000000 000000c0 00000000 2000000c 00000004 0c 0d 0e 0f\n\
         READ 83 00000000 000000cc 00000000 2000000c 00000004 0c 0d 0e 0f\n"
    );
    // `sum`, right after buf: only its own store, no off-by-one into buf.
    assert_eq!(
        bufmon("0x20000010 4 0\n"),
        "WRITE 87 00000000 000000d8 00000000 20000010 00000004 18 1c 20 24\n"
    );
    // Another address space: nothing.
    assert_eq!(bufmon("20000000 10 1\n"), "");
}

#[test]
fn bufmon_names_a_malformed_line() {
    let file = capture().with_extension("bad-buffers");
    std::fs::write(&file, "# ok\n20000000 10 0\n20000000 zz 0\n").unwrap();
    let (ok, out, err) = run_query(&[
        "bufmon",
        "--trace",
        dir(),
        "--buffers",
        file.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(out, "");
    assert!(
        err.contains("line 3") && err.contains("20000000 zz 0"),
        "{err}"
    );
}

#[test]
fn mmio_json_is_panda_mmio_trace_format_with_real_device_names() {
    let (ok, out, err) = run_query(&["mmio-json", "--trace", dir()]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2 + 22);
    assert_eq!((lines[0], lines[23]), ("[", "]"));
    let line = |t: &str, pc: u32, addr: u32, value: u32, dev: &str, last: bool| {
        format!(
            "{{ \"type\": \"{t}\", \"guest_pc\": \"0x{pc:08x}\", \"phys_addr\": \"0x{addr:08x}\", \"virt_addr\": \"0x{addr:08x}\", \"size\": \"0x00000004\", \"value\": \"0x{value:08x}\", \"device\": \"{dev}\" }}{}",
            if last { "" } else { "," }
        )
    };
    assert_eq!(lines[1], line("W", 0x16, 0x4000_c000, 0x48, "pl011", false));
    assert_eq!(
        lines[7],
        line("W", 0x32, 0xe000_e014, 0x1000, "systick", false)
    );
    assert_eq!(lines[8], line("W", 0x36, 0xe000_e018, 0, "systick", false));
    assert_eq!(lines[9], line("W", 0x3a, 0xe000_e010, 5, "systick", false));
    for (i, l) in lines[10..20].iter().enumerate() {
        // SysTick's current value is not deterministic: check all but the value.
        let prefix = format!(
            "{{ \"type\": \"R\", \"guest_pc\": \"0x{:08x}\", \"phys_addr\": \"0xe000e018\", \"virt_addr\": \"0xe000e018\", \"size\": \"0x00000004\", \"value\": \"0x",
            0x3c + 2 * i
        );
        assert!(
            l.starts_with(&prefix) && l.ends_with("\"device\": \"systick\" },"),
            "{l}"
        );
    }
    assert_eq!(lines[20], line("W", 0x50, 0xe000_e010, 0, "systick", false));
    assert_eq!(
        lines[21],
        line("R", 0xe2, 0x400f_d000, 0, "flash-control", false)
    );
    assert_eq!(lines[22], line("W", 0xee, 0x4002_8000, 1, "PWM", true));
    let json: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(json.as_array().unwrap().len(), 22);
}

#[test]
fn mmio_json_phys_offset_is_the_offset_into_the_devices_region_as_panda_writes_it() {
    let (ok, absolute, err) = run_query(&["mmio-json", "--trace", dir()]);
    assert!(ok, "{err}");
    let (ok, offset, err) = run_query(&["mmio-json", "--trace", dir(), "--phys", "offset"]);
    assert!(ok, "{err}");
    assert!(!err.contains("warning"), "{err}");
    // QEMU 10's lm3s6965evb (mtree.txt of this capture): pl011 at 0x4000c000,
    // v7m_systick at 0xe000e010, flash-control at 0x400fd000, PWM at 0x40028000.
    let expected_offset = |addr: u32| match addr {
        0x4000_c000..=0x4000_cfff => addr - 0x4000_c000,
        0xe000_e010..=0xe000_e0ef => addr - 0xe000_e010,
        0x400f_d000..=0x400f_dfff => addr - 0x400f_d000,
        0x4002_8000..=0x4002_8fff => addr - 0x4002_8000,
        _ => panic!("an MMIO address the test does not expect: {addr:#x}"),
    };
    let a: Vec<&str> = absolute.lines().collect();
    let o: Vec<&str> = offset.lines().collect();
    assert_eq!(a.len(), o.len());
    let mut offsets = Vec::new();
    for (a, o) in a.iter().zip(&o) {
        let Some((_, rest)) = a.split_once("\"phys_addr\": \"0x") else {
            assert_eq!(a, o, "the brackets");
            continue;
        };
        let addr = u32::from_str_radix(&rest[..8], 16).unwrap();
        let want = expected_offset(addr);
        offsets.push(want);
        // The same line but for phys_addr.
        assert_eq!(
            *o,
            a.replace(
                &format!("\"phys_addr\": \"0x{addr:08x}\""),
                &format!("\"phys_addr\": \"0x{want:08x}\"")
            )
        );
    }
    assert_eq!(offsets.len(), 22);
    // SysTick's RVR, CVR and CSR, as the firmware writes them.
    assert_eq!(&offsets[6..9], &[0x4, 0x8, 0x0]);
}

#[test]
fn mmio_json_phys_offset_without_a_memory_map_says_what_is_missing() {
    let copy = copy_capture(capture(), "golden-m3-no-mtree");
    std::fs::remove_file(copy.join("mtree.txt")).unwrap();
    let (ok, out, err) = run_query(&[
        "mmio-json",
        "--trace",
        copy.to_str().unwrap(),
        "--phys",
        "offset",
    ]);
    assert!(!ok);
    assert_eq!(out, "");
    assert!(
        err.contains("--phys offset needs the capture's memory map") && err.contains("mtree.txt"),
        "{err}"
    );
}

#[test]
fn execlog_prints_qemu_execlog_lines() {
    let (ok, out, err) = run_query(&["execlog", "--trace", dir()]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 99, "one line per executed instruction");
    assert_eq!(
        &lines[..6],
        &[
            "0, 0x8, 0xb800f000, \"b.w #0xc\"",
            "0, 0xc, 0x4340f44f, \"mov.w r3, #0xc000\"",
            "0, 0x10, 0x300f2c4, \"movt r3, #0x4000\"",
            "0, 0x14, 0x2248, \"movs r2, #0x48\"",
            "0, 0x16, 0x601a, \"str r2, [r3]\", store, 0x4000c000, pl011",
            "0, 0x18, 0x2265, \"movs r2, #0x65\"",
        ]
    );
    assert!(lines.contains(&"0, 0x5c, 0x701a, \"strb r2, [r3]\", store, 0x20000000, RAM"));
    assert_eq!(lines.iter().filter(|l| l.contains(", systick")).count(), 14);
    assert_eq!(lines.iter().filter(|l| l.contains(", load, ")).count(), 15);
    assert_eq!(lines.iter().filter(|l| l.contains(", store, ")).count(), 32);
}

#[test]
fn sql_answers_exact_counts_joins_and_unsigned_values() {
    let sql = |q: &str| {
        let (ok, out, err) = run_query(&["--trace", dir(), "--format", "csv", q]);
        assert!(ok, "{q}: {err}");
        out
    };
    assert_eq!(
        sql("select device, type, count(*) as n from mmio group by device, type order by device, type"),
        "device,type,n\nPWM,W,1\nflash-control,R,1\npl011,W,6\nsystick,R,10\nsystick,W,4\n"
    );
    assert_eq!(
        sql("select count(*) as n, sum(size) as bytes from mem where io = false"),
        "n,bytes\n25,52\n"
    );
    // Join: each access with its instruction's disassembly.
    assert_eq!(
        sql("select i.pc, c.disas from mem m join insn i on m.vcpu = i.vcpu and m.icount = i.icount \
             join code c on c.block = i.block and c.pc = i.pc where m.paddr = 0x20000010"),
        "pc,disas\n216,\"str r2, [r3]\"\n"
    );
    // Unsigned 64-bit addresses compare and print exactly.
    assert_eq!(
        sql("select max(vaddr) as top from mem"),
        "top\n3758153752\n"
    );
}

/// `query` through DuckDB on the same Parquet files, as CSV text.
fn duckdb_csv(dir: &Path, query: &str) -> String {
    let script = r#"
import sys, duckdb
d, q = sys.argv[1], sys.argv[2]
c = duckdb.connect()
for t in ["mem", "mmio", "block_exec", "code", "stats"]:
    c.execute(f"create view {t} as select * from read_parquet('{d}/{t}/*.parquet')")
# insn, rebuilt from block_exec and code as docs/capture-format.md says.
c.execute("""create view insn as
    select x.vcpu, x.icount + x.i as icount, c.pc, x.block
    from (select vcpu, icount, block, unnest(range(insns::bigint)) as i from block_exec) x
    left join (select distinct block, "index", pc from code) c
      on c.block = x.block and c."index" = x.i""")
r = c.execute(q)
print(",".join(col[0] for col in r.description))
for row in r.fetchall():
    print(",".join("" if v is None else str(v) for v in row))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .arg(query)
        .output()
        .expect("python3 is needed");
    assert!(
        out.status.success(),
        "DuckDB failed (is it installed? scripts/setup.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn sql_answers_equal_duckdb_on_the_same_files() {
    let a64 = capture_dir("golden-a64");
    run_capture(&a64, &["--events", "mem,mmio,insn"], &a64_qemu());
    let cases: [(&Path, &str); 6] = [
        (capture(), "select device, type, count(*) as n from mmio group by device, type order by device, type"),
        (
            capture(),
            "select vcpu, type, count(*) as n, sum(size) as bytes, min(paddr) as lo, max(paddr) as hi \
             from mem group by vcpu, type order by vcpu, type",
        ),
        (
            capture(),
            "select m.icount, m.pc, m.paddr, m.value, i.block from mem m join insn i \
             on m.vcpu = i.vcpu and m.icount = i.icount where m.io order by m.icount",
        ),
        (capture(), "select count(*) as n from insn where pc between 92 and 160"),
        (a64.as_path(), "select vcpu, asid, count(*) as n, sum(value) as s, max(vaddr) as top from mem group by vcpu, asid order by vcpu, asid"),
        (a64.as_path(), "select vcpu, count(*) as n, min(icount) as first, max(icount) as last from insn group by vcpu order by vcpu"),
    ];
    for (dir, q) in cases {
        let (ok, ours, err) = run_query(&["--trace", dir.to_str().unwrap(), "--format", "csv", q]);
        assert!(ok, "{q}: {err}");
        assert_eq!(ours, duckdb_csv(dir, q), "{q}");
    }
}
