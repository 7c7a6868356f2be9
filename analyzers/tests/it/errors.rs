use trace_analyzers::sql::run_sql;
use trace_analyzers::{bufmon, execlog, Capture};

use crate::common::*;

fn err_text(e: anyhow::Error) -> String {
    format!("{e:#}")
}

#[test]
fn missing_dir() {
    let e = err_text(Capture::open("/nonexistent/capture-dir").unwrap_err());
    assert!(e.contains("/nonexistent/capture-dir"), "{e}");
    assert!(e.contains("No such file"), "{e}");
}

#[test]
fn not_a_capture() {
    let t = TmpDir::new("notcap");
    std::fs::create_dir_all(t.path().join("logs")).unwrap();
    let e = err_text(Capture::open(t.path()).unwrap_err());
    assert!(e.contains("is not a capture directory"), "{e}");
    let f = t.path().join("file");
    std::fs::write(&f, "x").unwrap();
    let e = err_text(Capture::open(&f).unwrap_err());
    assert!(e.contains("not a directory"), "{e}");
}

#[test]
fn bad_sql() {
    let (_t, cap) = reference();
    let e = err_text(run_sql(&cap, "SELEC * FROM mem").unwrap_err());
    assert!(e.starts_with("SQL error:"), "{e}");
    let e = err_text(run_sql(&cap, "SELECT nosuchcolumn FROM mem").unwrap_err());
    assert!(e.contains("nosuchcolumn"), "{e}");
}

#[test]
fn unknown_table() {
    let (_t, cap) = reference();
    let e = err_text(run_sql(&cap, "SELECT * FROM memory").unwrap_err());
    assert!(e.starts_with("unknown table 'memory'"), "{e}");
    assert!(
        e.ends_with("mem, mmio, insn, block_exec, code, stats"),
        "{e}"
    );
    let e = err_text(cap.scan("nope").err().unwrap());
    assert!(e.starts_with("unknown table 'nope'"), "{e}");
}

#[test]
fn analyzer_needs_table() {
    let t = TmpDir::new("needs");
    write_meta(t.path(), 32, true);
    write_part(t.path(), "mmio", 0, &mut mmio_df(&[]));
    let cap = Capture::open(t.path()).unwrap();
    let bufs = bufmon::parse_buffers("10 4 0", "b").unwrap();
    let e = err_text(bufmon::bufmon(&cap, &bufs, &mut Vec::new()).unwrap_err());
    assert!(e.starts_with("bufmon needs the 'mem' table"), "{e}");
    let e = err_text(execlog::execlog(&cap, &mut Vec::new()).unwrap_err());
    assert!(e.starts_with("execlog needs the 'insn' table"), "{e}");
}

#[test]
fn truncated_part_is_named() {
    let t = TmpDir::new("trunc");
    reference_capture(t.path());
    let part = t.path().join("mem/part-000001.parquet");
    let bytes = std::fs::read(&part).unwrap();
    std::fs::write(&part, &bytes[..bytes.len() / 2]).unwrap();
    let cap = Capture::open(t.path()).unwrap();
    let e = err_text(run_sql(&cap, "SELECT count(*) FROM mem").unwrap_err());
    assert!(e.contains("corrupt Parquet part"), "{e}");
    assert!(e.contains("mem/part-000001.parquet"), "{e}");
    // Other tables still answer.
    assert!(run_sql(&cap, "SELECT count(*) FROM insn").is_ok());
    // Analyzers reading mem fail the same way.
    let bufs = bufmon::parse_buffers("10 4 0", "b").unwrap();
    let e = err_text(bufmon::bufmon(&cap, &bufs, &mut Vec::new()).unwrap_err());
    assert!(e.contains("mem/part-000001.parquet"), "{e}");
    assert!(cap
        .warnings()
        .iter()
        .any(|w| w.contains("mem/part-000001.parquet")));
}

#[test]
fn corrupt_pages_are_named() {
    let t = TmpDir::new("garbage");
    reference_capture(t.path());
    let part = t.path().join("block_exec/part-000000.parquet");
    let mut bytes = std::fs::read(&part).unwrap();
    // Keep the magic and the footer, overwrite the column data.
    let footer = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
    let data_end = bytes.len() - 8 - footer as usize;
    for b in &mut bytes[4..data_end] {
        *b = 0xa5;
    }
    std::fs::write(&part, &bytes).unwrap();
    let cap = Capture::open(t.path()).unwrap();
    let e = err_text(run_sql(&cap, "SELECT sum(pc) FROM insn").unwrap_err());
    assert!(e.contains("block_exec/part-000000.parquet"), "{e}");
    // Written as it runs (trace-query's CSV and JSON): the same error.
    let lf = trace_analyzers::sql::plan_sql(&cap, "SELECT vcpu, icount FROM insn").unwrap();
    let e = err_text(cap.collect_in_batches(lf, |_| Ok(())).unwrap_err());
    assert!(e.contains("block_exec/part-000000.parquet"), "{e}");
}

/// A result handed over a batch at a time holds every row once, in the
/// query's order; an empty one is one batch of no rows in the result's
/// columns; a writer that fails (a closed pipe) stops the query with its
/// error.
#[test]
fn results_in_batches() {
    let (_t, cap) = reference();
    let q = "SELECT vcpu, icount, pc FROM insn ORDER BY icount DESC, vcpu";
    let whole = run_sql(&cap, q).unwrap();
    let mut batches = Vec::new();
    let lf = trace_analyzers::sql::plan_sql(&cap, q).unwrap();
    cap.collect_in_batches(lf, |df| {
        batches.push(df);
        Ok(())
    })
    .unwrap();
    let mut joined = batches[0].clone();
    for b in &batches[1..] {
        joined.vstack_mut(b).unwrap();
    }
    assert_eq!(joined, whole);
    assert_eq!(whole.height(), 17);

    let mut batches = Vec::new();
    let lf =
        trace_analyzers::sql::plan_sql(&cap, "SELECT vcpu, pc FROM mem WHERE vcpu = 9").unwrap();
    cap.collect_in_batches(lf, |df| {
        batches.push(df);
        Ok(())
    })
    .unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].height(), 0);
    assert_eq!(batches[0].get_column_names(), ["vcpu", "pc"]);

    let lf = trace_analyzers::sql::plan_sql(&cap, "SELECT * FROM mem").unwrap();
    let e = cap
        .collect_in_batches(lf, |_| Err(anyhow::anyhow!("Broken pipe")))
        .unwrap_err();
    assert_eq!(e.to_string(), "Broken pipe");
}

#[test]
fn garbage_file_is_named() {
    let t = TmpDir::new("notpq");
    reference_capture(t.path());
    std::fs::write(
        t.path().join("code/part-000001.parquet"),
        b"hello, not parquet",
    )
    .unwrap();
    let cap = Capture::open(t.path()).unwrap();
    let e = err_text(run_sql(&cap, "SELECT * FROM code").unwrap_err());
    assert!(e.contains("code/part-000001.parquet"), "{e}");
    assert!(e.contains("not a Parquet file"), "{e}");
}

#[test]
fn malformed_buffer_line() {
    let e = err_text(
        bufmon::parse_buffers("# bufs\n10 4 0\n\n0x20 4 zz\n", "search_buffers.txt").unwrap_err(),
    );
    assert_eq!(
        e,
        "search_buffers.txt line 4: expected `<vaddr> <size> <asid>` in hex, got \"0x20 4 zz\""
    );
}
