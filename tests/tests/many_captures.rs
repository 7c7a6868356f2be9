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

/// The analyzers over many captures: each capture's output as it is alone,
/// in capture order, each line starting with the capture's name (bufmon,
/// execlog), or each JSON object with its `"capture"` (mmio-json).
#[test]
fn analyzers_read_many_captures_each_line_with_its_capture() {
    let runs = capture_dir("many/analyzers");
    std::fs::create_dir_all(&runs).unwrap();
    let names = ["run-1", "run-2"];
    for name in names {
        run_capture(&runs.join(name), &["--events", "mem,mmio,insn"], &m3_qemu());
    }
    let pattern = format!("{}/run-*", runs.display());
    let one = |name: &str| runs.join(name).display().to_string();
    let buffers = runs.with_extension("buffers");
    std::fs::write(&buffers, "20000000 10 0\n").unwrap();
    let buffers = buffers.display().to_string();

    for analyzer in [
        &["execlog"][..],
        &["bufmon", "--buffers", buffers.as_str()][..],
    ] {
        let (ok, many, err) = run_query(&[analyzer, &["--trace", &pattern]].concat());
        assert!(ok, "{err}");
        let mut expected = String::new();
        let mut lines = 0;
        for name in names {
            let (ok, alone, err) = run_query(&[analyzer, &["--trace", &one(name)]].concat());
            assert!(ok, "{err}");
            for line in alone.lines() {
                expected.push_str(&format!("{name}: {line}\n"));
                lines += 1;
            }
        }
        // Each capture: 99 instructions (analyzers_golden.rs); the buffer at
        // 0x20000000 written a byte at a time (16), then a word at a time
        // (4), and read a word at a time (4).
        let per_capture = if analyzer[0] == "execlog" { 99 } else { 24 };
        assert_eq!(lines, 2 * per_capture, "{analyzer:?}");
        assert_eq!(many, expected, "{analyzer:?}");
    }

    let (ok, many, err) = run_query(&["mmio-json", "--trace", &pattern]);
    assert!(ok, "{err}");
    let many: Vec<serde_json::Value> = serde_json::from_str(&many).expect("valid JSON");
    let mut expected = Vec::new();
    for name in names {
        let (ok, alone, err) = run_query(&["mmio-json", "--trace", &one(name)]);
        assert!(ok, "{err}");
        let alone: Vec<serde_json::Value> = serde_json::from_str(&alone).unwrap();
        assert_eq!(alone.len(), 22);
        for mut object in alone {
            let fields = object.as_object_mut().unwrap();
            let mut with_capture = serde_json::Map::new();
            with_capture.insert("capture".into(), name.into());
            with_capture.append(fields);
            expected.push(serde_json::Value::Object(with_capture));
        }
    }
    assert_eq!(many, expected);
}
