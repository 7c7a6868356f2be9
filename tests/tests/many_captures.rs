//! Many captures as one dataset (`trace-query --trace 'runs/*'`): every
//! table gets a `capture` column, each directory's own name, and a query
//! sees every capture's rows. Three real captures of firmware whose
//! accesses are known (tests/firmware/README.md): the Cortex-M3 firmware
//! (47 accesses, 6 UART stores) twice, the IT-block firmware once (no
//! MMIO).

use trace_tests::*;

fn runs() -> std::path::PathBuf {
    let runs = capture_dir("many/runs");
    std::fs::create_dir_all(&runs).unwrap();
    for (name, qemu) in [
        ("run-1", m3_qemu()),
        ("run-2", m3_qemu()),
        ("run-3", lm3s6965evb_qemu("m3it.elf")),
    ] {
        run_capture(&runs.join(name), &["--events", "mem,mmio"], &qemu);
    }
    runs
}

#[test]
fn a_pattern_reads_every_capture_as_one_dataset() {
    let runs = runs();
    let pattern = format!("{}/run-*", runs.display());
    let (ok, out, err) = run_query(&[
        "--trace",
        &pattern,
        "--format",
        "csv",
        "select capture, count(*) as n from mem group by capture order by capture",
    ]);
    assert!(ok, "{err}");
    // m3it: per pass, the loads and stores whose condition held, counted by
    // QEMU's execlog in tests/tests/execlog.rs: read back here from run-3.
    let m3it = table(&runs.join("run-3"), "mem").unwrap().height();
    assert_eq!(
        out,
        format!("capture,n\nrun-1,47\nrun-2,47\nrun-3,{m3it}\n")
    );

    // The UART bytes of every capture, one query.
    let (ok, out, err) = run_query(&[
        "--trace",
        &pattern,
        "--format",
        "csv",
        "select capture, count(*) as n from mmio where device = 'pl011' and type = 'W' \
         group by capture order by capture",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "capture,n\nrun-1,6\nrun-2,6\n");

    // --trace given twice is the same dataset.
    let (ok, out, _) = run_query(&[
        "--trace",
        &runs.join("run-1").display().to_string(),
        "--trace",
        &runs.join("run-2").display().to_string(),
        "--format",
        "csv",
        "select count(*) as n from mem",
    ]);
    assert!(ok);
    assert_eq!(out, "n\n94\n");
}

#[test]
fn bad_dataset_arguments_are_clear_errors() {
    let runs = capture_dir("many/bad");
    std::fs::create_dir_all(runs.join("a/run-1")).unwrap();
    let (ok, _, err) = run_query(&["--trace", &format!("{}/none-*", runs.display()), "select 1"]);
    assert!(!ok);
    assert!(err.contains("no directory matches"), "{err}");
    let (ok, _, err) = run_query(&[
        "--trace",
        &format!("{}/*/run-1", runs.display()),
        "select 1",
    ]);
    assert!(!ok);
    assert!(err.contains("only the last path component"), "{err}");
}
