//! The `trace-query` binary: exit codes, stdout, stderr.

use std::process::{Command, Output};

use crate::common::*;

fn tq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trace-query"))
        .args(args)
        .output()
        .expect("run trace-query")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn sql_csv_and_table() {
    let t = TmpDir::new("cli");
    reference_capture(t.path());
    let dir = t.path().to_str().unwrap();
    let o = tq(&[
        "--trace",
        dir,
        "--format",
        "csv",
        "SELECT icount, pc FROM mmio ORDER BY icount",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "icount,pc\n9,272\n10,276\n11,280\n");
    assert_eq!(stderr(&o), "");

    // The table shows every row and column of a wide result.
    let o = tq(&["--trace", dir, "SELECT * FROM mem ORDER BY icount, vcpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("shape: (13, 12)"), "{out}");
    assert!(!out.contains('…'), "{out}");
    assert!(!out.contains("plugin_device"));
    assert!(out.contains("value_hi") && out.contains("device"), "{out}");
    assert!(out.contains("1084818905618843912"), "{out}"); // value_hi of the 16-byte load
}

#[test]
fn tables_listing() {
    let t = TmpDir::new("clitables");
    reference_capture(t.path());
    let o = tq(&["--trace", t.path().to_str().unwrap(), "--tables"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("mem (13 rows, 2 parts)\n  vcpu: u32\n  icount: u64\n"),
        "{out}"
    );
    assert!(out.contains("\nstats (5 rows, 1 part)\n"), "{out}");
    assert!(out.contains("  bytes: binary\n"), "{out}");
    assert!(
        out.contains("\ninsn (17 rows, a view of block_exec and code)\n  vcpu: u32\n  icount: u64\n  pc: u64\n  block: u64\nblock_exec (4 rows, 2 parts)\n"),
        "{out}"
    );
}

#[test]
fn errors_exit_1() {
    let t = TmpDir::new("clierr");
    reference_capture(t.path());
    let dir = t.path().to_str().unwrap();

    let o = tq(&["--trace", dir, "SELEC 1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("trace-query: error: SQL error:"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"));

    let o = tq(&["--trace", dir, "SELECT * FROM nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown table 'nope'"),
        "{}",
        stderr(&o)
    );

    let o = tq(&["--trace", "/nonexistent/dir", "SELECT 1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/dir"), "{}", stderr(&o));

    let bufs = t.path().join("bufs.txt");
    std::fs::write(&bufs, "10 4 0\nnot a buffer\n").unwrap();
    let o = tq(&[
        "bufmon",
        "--trace",
        dir,
        "--buffers",
        bufs.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));

    let part = t.path().join("block_exec/part-000001.parquet");
    let b = std::fs::read(&part).unwrap();
    std::fs::write(&part, &b[..b.len() - 10]).unwrap();
    let o = tq(&["execlog", "--trace", dir]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("block_exec/part-000001.parquet"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn loss_warning_on_stderr() {
    let t = TmpDir::new("clilost");
    reference_capture(t.path());
    write_part(
        t.path(),
        "stats",
        0,
        &mut stats_df(&[("events_lost", Some(0), 7)]),
    );
    let o = tq(&[
        "--trace",
        t.path().to_str().unwrap(),
        "--format",
        "json",
        "SELECT count(*) AS n FROM insn",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "{\"n\":17}\n");
    assert!(
        stderr(&o).starts_with("trace-query: warning: 7 events lost (vcpu 0: 7)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn analyzer_subcommands() {
    let t = TmpDir::new("clisub");
    reference_capture(t.path());
    let dir = t.path().to_str().unwrap();
    let bufs = t.path().join("search_buffers.txt");
    std::fs::write(&bufs, "20000100 1 1\n").unwrap();
    let o = tq(&[
        "bufmon",
        "--trace",
        dir,
        "--buffers",
        bufs.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "WRITE 8 00000000 0000010c 00000001 20000100 00000001 55\n"
    );

    let o = tq(&["mmio-json", "--trace", dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[2]["device"], "systick");

    let o = tq(&["execlog", "--trace", dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 17);

    let svg = t.path().join("mmio.svg");
    let o = tq(&["timeline", "--trace", dir, "--out", svg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(text.matches("<g class=\"lane\"").count(), 2);
}

/// `TRACE_REF_DIR=/tmp/ref cargo test --release -p trace-analyzers -- --ignored write_reference`
/// writes the reference capture there, to try trace-query by hand.
#[test]
#[ignore]
fn write_reference_capture() {
    let dir = std::env::var("TRACE_REF_DIR").expect("set TRACE_REF_DIR");
    std::fs::create_dir_all(&dir).unwrap();
    reference_capture(std::path::Path::new(&dir));
}

/// `TRACE_BIG_DIR=/tmp/big TRACE_BIG_N=10000000 cargo test --release -p trace-analyzers -- --ignored write_big`
/// writes a large synthetic capture (N instructions on one vCPU, in parts of
/// 1M rows), to measure trace-query's time and memory by hand.
#[test]
#[ignore]
fn write_big_capture() {
    let dir = std::path::PathBuf::from(std::env::var("TRACE_BIG_DIR").expect("TRACE_BIG_DIR"));
    let n: u64 = std::env::var("TRACE_BIG_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    std::fs::create_dir_all(&dir).unwrap();
    write_meta(&dir, 32, true);
    write_part(&dir, "code", 0, &mut code_df(&code_rows()));
    // The reference program's vCPU 0 path, repeated.
    let path: Vec<(u64, u64)> = insn_rows()
        .into_iter()
        .filter(|r| r.0 == 0)
        .map(|r| (r.2, r.3))
        .collect();
    let (p0, p1) = mem_parts();
    let mut accesses: Vec<Mem> = p0.into_iter().chain(p1).filter(|m| m.vcpu == 0).collect();
    accesses.sort_by_key(|m| m.icount);
    let per = path.len() as u64;
    let chunk = 1_000_000u64;
    let mut part = 0;
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        let insn: Vec<(u32, u64, u64, u64)> = (start..end)
            .map(|i| {
                let (pc, b) = path[(i % per) as usize];
                (0, i, pc, b)
            })
            .collect();
        write_part(&dir, "insn", part, &mut insn_df(&insn));
        let mut mem = Vec::new();
        for rep in start / per..end.div_ceil(per) {
            for a in &accesses {
                let ic = rep * per + a.icount;
                if ic >= start && ic < end {
                    let mut m = a.clone();
                    m.icount = ic;
                    m.value = m.value.wrapping_add(rep);
                    mem.push(m);
                }
            }
        }
        let mmio: Vec<Mem> = mem.iter().filter(|m| m.device.is_some()).cloned().collect();
        write_part(&dir, "mem", part, &mut mem_df(&mem));
        write_part(&dir, "mmio", part, &mut mmio_df(&mmio));
        part += 1;
        start = end;
    }
    write_part(
        &dir,
        "stats",
        0,
        &mut stats_df(&[("events", Some(0), n), ("events_lost", Some(0), 0)]),
    );
}
