use trace_analyzers::output::{write_frame, Format};
use trace_analyzers::sql::run_sql;
use trace_analyzers::Capture;

use crate::common::*;

fn query(cap: &Capture, q: &str, f: Format) -> String {
    let df = run_sql(cap, q).unwrap();
    let mut out = Vec::new();
    write_frame(&df, f, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn tables_are_registered() {
    let (_t, cap) = reference();
    assert_eq!(
        cap.table_names(),
        ["mem", "mmio", "insn", "block_exec", "code", "stats"]
    );
    let info = cap.table_info().unwrap();
    let rows: Vec<(String, u64, usize)> = info
        .iter()
        .map(|t| (t.name.clone(), t.rows, t.parts))
        .collect();
    assert_eq!(
        rows,
        [
            ("mem".to_string(), 13, 2),
            ("mmio".to_string(), 3, 1),
            // The view: as many rows as instructions ran, block_exec's parts.
            ("insn".to_string(), 17, 2),
            ("block_exec".to_string(), 4, 2),
            ("code".to_string(), 17, 1),
            ("stats".to_string(), 5, 1),
        ]
    );
    assert_eq!(
        info.iter().map(|t| t.view).collect::<Vec<_>>(),
        [false, false, true, false, false, false]
    );
    let mem = &info[0].columns;
    assert_eq!(mem[0], ("vcpu".to_string(), "u32".to_string()));
    assert_eq!(mem.len(), 12);
}

#[test]
fn filter_group_by_csv() {
    let (_t, cap) = reference();
    assert_eq!(
        query(
            &cap,
            "SELECT type, count(*) AS n FROM mem WHERE NOT io GROUP BY type ORDER BY type",
            Format::Csv
        ),
        "type,n\nR,5\nW,5\n"
    );
    assert_eq!(
        query(
            &cap,
            "SELECT device, count(*) AS n FROM mmio GROUP BY device ORDER BY n DESC, device",
            Format::Csv
        ),
        "device,n\nuart0,2\nsystick,1\n"
    );
}

#[test]
fn join_insn_code() {
    let (_t, cap) = reference();
    let q = "SELECT i.icount, c.disas, c.size FROM insn i JOIN code c \
             ON i.block = c.block AND i.pc = c.pc \
             WHERE i.vcpu = 0 AND i.icount < 3 ORDER BY i.icount";
    assert_eq!(
        query(&cap, q, Format::Csv),
        "icount,disas,size\n0,\"push {r4, lr}\",4\n1,bl #0x200,4\n2,\"ldr r2, [r3]\",2\n"
    );
    assert_eq!(
        query(&cap, q, Format::Json),
        "{\"icount\":0,\"disas\":\"push {r4, lr}\",\"size\":4}\n\
         {\"icount\":1,\"disas\":\"bl #0x200\",\"size\":4}\n\
         {\"icount\":2,\"disas\":\"ldr r2, [r3]\",\"size\":2}\n"
    );
}

#[test]
fn binary_column_as_hex() {
    let (_t, cap) = reference();
    assert_eq!(
        query(
            &cap,
            "SELECT pc, bytes FROM code WHERE pc = 512",
            Format::Csv
        ),
        "pc,bytes\n512,1268\n"
    );
}

fn big_values_capture() -> (TmpDir, Capture) {
    let t = TmpDir::new("u64");
    write_meta(t.path(), 64, true);
    write_part(
        t.path(),
        "stats",
        0,
        &mut stats_df(&[
            ("a", Some(0), u64::MAX),
            ("b", Some(0), (1u64 << 63) + 1),
            ("c", None, 7),
        ]),
    );
    let cap = Capture::open(t.path()).unwrap();
    (t, cap)
}

#[test]
fn u64_above_2_63_exact() {
    let (_t, cap) = big_values_capture();
    let q = "SELECT name, value FROM stats ORDER BY value DESC";
    assert_eq!(
        query(&cap, q, Format::Csv),
        "name,value\na,18446744073709551615\nb,9223372036854775809\nc,7\n"
    );
    assert_eq!(
        query(&cap, q, Format::Json),
        "{\"name\":\"a\",\"value\":18446744073709551615}\n\
         {\"name\":\"b\",\"value\":9223372036854775809}\n\
         {\"name\":\"c\",\"value\":7}\n"
    );
    let df = run_sql(
        &cap,
        "SELECT max(value) AS m, sum(value) AS s FROM stats WHERE value > 7",
    )
    .unwrap();
    assert_eq!(
        df.column("m").unwrap().u64().unwrap().get(0),
        Some(u64::MAX)
    );
    // Literals above i64::MAX and hex literals work in queries.
    assert_eq!(
        query(
            &cap,
            "SELECT name FROM stats WHERE value > 9223372036854775808 AND value <> 0xffffffffffffffff",
            Format::Csv
        ),
        "name\nb\n"
    );
    assert_eq!(
        query(
            &cap,
            "SELECT name FROM stats WHERE value = 18446744073709551615",
            Format::Csv
        ),
        "name\na\n"
    );
    // Table output prints the exact digits too.
    let table = query(&cap, q, Format::Table);
    assert!(table.contains("18446744073709551615"), "{table}");
    assert!(table.contains("9223372036854775809"), "{table}");
}

#[test]
fn extra_table_directory_is_registered() {
    let t = TmpDir::new("extra");
    reference_capture(t.path());
    write_part(t.path(), "extra", 0, &mut stats_df(&[("x", Some(1), 2)]));
    // not tables: no parquet, hidden, temporary
    std::fs::create_dir_all(t.path().join("notes")).unwrap();
    std::fs::write(t.path().join("notes/readme.txt"), "hi").unwrap();
    std::fs::write(t.path().join("mem/.part-000002.parquet.tmp"), "junk").unwrap();
    let cap = Capture::open(t.path()).unwrap();
    assert_eq!(
        cap.table_names(),
        [
            "mem",
            "mmio",
            "insn",
            "block_exec",
            "code",
            "stats",
            "extra"
        ]
    );
    assert_eq!(
        query(&cap, "SELECT name, value FROM extra", Format::Csv),
        "name,value\nx,2\n"
    );
    assert_eq!(
        query(&cap, "SELECT count(*) AS n FROM mem", Format::Csv),
        "n\n13\n"
    );
}

#[test]
fn empty_table_gives_no_rows() {
    let t = TmpDir::new("empty");
    write_meta(t.path(), 32, true);
    write_part(t.path(), "mem", 0, &mut mem_df(&[]));
    let cap = Capture::open(t.path()).unwrap();
    assert_eq!(
        query(&cap, "SELECT icount, vaddr FROM mem", Format::Csv),
        "icount,vaddr\n"
    );
    assert_eq!(query(&cap, "SELECT icount FROM mem", Format::Json), "");
}

#[test]
fn warnings_lost_events_and_incomplete() {
    let (_t, cap) = reference();
    assert!(cap.warnings().is_empty(), "{:?}", cap.warnings());

    let t = TmpDir::new("lost");
    reference_capture(t.path());
    write_meta(t.path(), 32, false);
    write_part(
        t.path(),
        "stats",
        0,
        &mut stats_df(&[
            ("events_lost", Some(0), 10),
            ("events_lost", Some(1), 32),
            ("events", Some(0), 100),
        ]),
    );
    let cap = Capture::open(t.path()).unwrap();
    let w = cap.warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w.iter().any(|m| m.contains("incomplete")), "{w:?}");
    assert!(
        w.iter()
            .any(|m| m.starts_with("42 events lost (vcpu 0: 10, vcpu 1: 32)")),
        "{w:?}"
    );
}

#[test]
fn warnings_from_capture_json_and_stats() {
    // An unfinished capture: no stats table yet, capture.json's running sum.
    let t = TmpDir::new("unfinished");
    write_part(t.path(), "mem", 0, &mut mem_df(&[]));
    let meta = serde_json::json!({
        "format_version": 2, "complete": false, "guest_pointer_bits": null,
        "end": "error", "error": "disk full", "events_lost": 5,
    });
    std::fs::write(t.path().join("capture.json"), meta.to_string()).unwrap();
    let cap = Capture::open(t.path()).unwrap();
    assert_eq!(cap.guest_pointer_bits(), 64);
    let w = cap.warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("is incomplete (capture.json: complete=false, end: error, error: disk full)"),
        "{w:?}"
    );
    assert!(w[1].starts_with("5 events lost: "), "{w:?}");

    // Data-quality counters of the stats table.
    let t = TmpDir::new("unknowns");
    write_meta(t.path(), 32, true);
    write_part(
        t.path(),
        "stats",
        0,
        &mut stats_df(&[
            ("blocks_unknown", None, 3),
            ("devices_unknown", None, 4),
            ("events_lost", Some(0), 0),
        ]),
    );
    let w = Capture::open(t.path()).unwrap().warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("3 executed blocks had no description"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("4 I/O accesses have no device name"),
        "{w:?}"
    );
}

/// `insn` is rebuilt from `block_exec` and `code`: one row per instruction
/// that ran, in `block_exec` order, with the pc of its place in the block.
#[test]
fn insn_view_is_one_row_per_instruction_that_ran() {
    let (_t, cap) = reference();
    let rows = cap.collect(cap.scan("insn").unwrap()).unwrap();
    let col = |c: &str| -> Vec<u64> {
        let s = rows
            .column(c)
            .unwrap()
            .cast(&polars::prelude::DataType::UInt64)
            .unwrap();
        s.u64().unwrap().into_no_null_iter().collect()
    };
    let expected = insn_rows();
    assert_eq!(
        col("vcpu"),
        expected.iter().map(|r| r.0 as u64).collect::<Vec<_>>()
    );
    assert_eq!(
        col("icount"),
        expected.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    assert_eq!(col("pc"), expected.iter().map(|r| r.2).collect::<Vec<_>>());
    assert_eq!(
        col("block"),
        expected.iter().map(|r| r.3).collect::<Vec<_>>()
    );
}

/// A block that stopped early gives only the instructions that ran; one
/// whose description is missing gives its instructions with a null pc; a
/// block described twice (a `code` row written again) still gives each
/// instruction once; a row of no instructions gives none.
#[test]
fn insn_view_edge_cases() {
    let t = TmpDir::new("insnview");
    write_meta(t.path(), 32, true);
    let mut code = code_rows();
    code.push(code[0]); // block 1, index 0 twice
    write_part(t.path(), "code", 0, &mut code_df(&code));
    write_part(
        t.path(),
        "block_exec",
        0,
        // block 2 (5 insns) stops after 2; block 77 is unknown; 0 insns.
        &mut block_exec_df(&[(0, 10, 2, 2), (0, 12, 77, 3), (0, 15, 1, 0), (0, 15, 1, 2)]),
    );
    let cap = Capture::open(t.path()).unwrap();
    assert_eq!(
        query(&cap, "SELECT icount, pc, block FROM insn", Format::Csv),
        "icount,pc,block\n10,512,2\n11,514,2\n12,,77\n13,,77\n14,,77\n15,256,1\n16,260,1\n"
    );
    // Windows cut through blocks: the rows of [11, 13) only.
    let w = trace_analyzers::stream::Window {
        start: 11,
        end: Some(13),
    };
    let df = cap.collect(cap.scan_window("insn", w).unwrap()).unwrap();
    let icount: Vec<u64> = df
        .column("icount")
        .unwrap()
        .u64()
        .unwrap()
        .into_no_null_iter()
        .collect();
    assert_eq!(icount, [11, 12]);
}

/// A running capture: capture.json lists its tables from the start, so a
/// table whose first part is not written yet answers with no rows (and its
/// declared columns), not "unknown table".
#[test]
fn tables_without_a_part_yet_are_empty_not_unknown() {
    let t = TmpDir::new("running");
    let mut mem = mem_df(&[ram(0, 1, 0x100, "load", 0x2000_0000, 0x2000_0000, 4, 7)]);
    write_part(t.path(), "mem", 0, &mut mem);
    let meta = serde_json::json!({
        "format_version": 2, "complete": false,
        "tables": {"mem": 1, "mmio": 0, "block_exec": 0, "code": 0},
    });
    std::fs::write(t.path().join("capture.json"), meta.to_string()).unwrap();
    let cap = Capture::open(t.path()).unwrap();
    let count = |table: &str| {
        let df = run_sql(&cap, &format!("select count(*) as n from {table}")).unwrap();
        let n = df.column("n").unwrap();
        n.cast(&polars::prelude::DataType::UInt64)
            .unwrap()
            .u64()
            .unwrap()
            .get(0)
    };
    assert_eq!(count("mmio"), Some(0));
    assert_eq!(count("mem"), Some(1));
    let df = run_sql(&cap, "select device, count(*) from mmio group by device").unwrap();
    assert_eq!(df.height(), 0);
    assert_eq!(count("insn"), Some(0));
    let names = cap.table_names();
    assert_eq!(names, ["mem", "mmio", "insn", "block_exec", "code"]);
    assert!(cap.warnings()[0].contains("is incomplete"));
}

/// The result of `q` as sorted CSV lines (engines order groups each their
/// own way).
fn sorted_csv(df: &polars::prelude::DataFrame) -> Vec<String> {
    let mut out = Vec::new();
    write_frame(df, Format::Csv, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[1..].sort();
    lines
}

/// Group-by queries trace-query computes by hand (direct_aggregate.rs) give
/// exactly what polars gives: the same names, types and values, with nulls,
/// several vCPUs and parts, a WHERE, ORDER BY and LIMIT, and the `insn`
/// view's counts from `block_exec` without expanding it. Shapes it does not
/// take are left to polars (None).
#[test]
fn aggregations_computed_by_hand_are_polars_answers() {
    use trace_analyzers::direct_aggregate::{try_run, Source};
    use trace_analyzers::sql::{plan_sql, rewrite_literals};

    let (_t, cap) = reference();
    let by_hand = |q: &str| {
        // A query polars cannot plan is none of this module's.
        let mut lf = plan_sql(&cap, q).ok()?;
        let schema = lf.collect_schema().ok()?;
        let source = [Source {
            name: None,
            cap: &cap,
        }];
        try_run(&source, &rewrite_literals(q), &schema)
    };
    for q in [
        "select vcpu, type, count(*), sum(size) from mem group by vcpu, type",
        "select type, count(*) as n, min(value) as lo, max(value) as hi, sum(value_hi) as s, \
         count(value_hi) as c, count(device) as d from mem group by type",
        "select device, io, count(*) as n from mem group by device, io",
        "select asid, sum(value) as s from mem where vaddr >= 0x20000000 group by asid",
        "SELECT type, count(*) AS n FROM mem WHERE NOT io GROUP BY type ORDER BY type",
        "select device, count(*) as n from mmio group by device order by n desc, device limit 1",
        "select count(*), min(icount) as first, max(icount) as last from mem",
        "select vcpu, count(*) as n from insn group by vcpu order by vcpu",
        "select block, count(vcpu) from insn group by block",
        "select count(*) from insn",
        "select vcpu, count(*) from block_exec group by vcpu",
        "select type, count(*) from mem where type = 'X' group by type",
    ] {
        let expected = run_sql_polars(&cap, q);
        match by_hand(q) {
            Some(df) if expected.height() == 0 => panic!("{q}: rows from no rows: {df}"),
            Some(df) => {
                assert_eq!(df.schema(), expected.schema(), "{q}");
                assert_eq!(sorted_csv(&df), sorted_csv(&expected), "{q}");
                if q.contains("order by") || q.contains("ORDER BY") {
                    assert_eq!(df, expected, "{q}: the same order");
                }
            }
            // Only an empty result is left to polars among these.
            None => assert_eq!(expected.height(), 0, "{q}: not computed by hand"),
        }
    }
    for q in [
        "select type, count(distinct vcpu) from mem group by type",
        "select type, count(*) from mem group by type having count(*) > 1",
        "select m.type, count(*) from mem m group by m.type",
        "select type, count(*) from mem group by type order by count(*)",
        "select distinct type from mem",
        "select type, avg(size) from mem group by type",
        "select pc, count(*) from insn group by pc",
        "select vcpu, count(*) from insn where vcpu = 0 group by vcpu",
        "select type, count(*) from (select * from mem) group by type",
        "select type, count(*) from mem join mmio using (vcpu) group by type",
        "select type, sum(device) from mem group by type",
    ] {
        assert!(by_hand(q).is_none(), "{q} was computed by hand");
    }
}

/// `run_sql` with polars alone (as `TRACE_QUERY_ENGINE=polars` runs it).
fn run_sql_polars(cap: &Capture, q: &str) -> polars::prelude::DataFrame {
    let lf = trace_analyzers::sql::plan_sql(cap, q).unwrap();
    cap.collect(lf).unwrap()
}
