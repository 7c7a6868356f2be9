//! `trace-query perfetto` on real captures of the test firmware
//! (tests/firmware/README.md), read back by an independent reader: Perfetto's
//! own compiled protos (the `perfetto` Python package, which scripts/setup.sh
//! installs pinned) in tests/perfetto/check_trace.py, which also checks the
//! packet sequence, the interning and the slice nesting. What it decodes is
//! compared with the same capture's tables (SQL), `trace-query execlog`,
//! `stats` and binutils' `nm`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use trace_tests::*;

/// What the trace says its timestamps are (analyzers/src/perfetto.rs).
const TIMESTAMPS: &str = "timestamps: 1 ns = 1 guest instruction (icount) of the vCPU";

/// Where scripts/setup.sh installs the `perfetto` Python package.
fn perfetto_python() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is not set");
    let dir = PathBuf::from(home).join(".cache/trace-collector/python/perfetto-0.59.1");
    assert!(
        dir.join("perfetto").is_dir(),
        "{} is missing: run scripts/setup.sh (it installs Perfetto's Python protos)",
        dir.display()
    );
    dir
}

/// `trace-query perfetto --trace CAPTURE --out CAPTURE.perfetto-trace
/// [--symbols ELF]`: the file written and trace-query's stderr.
fn export(capture: &Path, symbols: Option<&Path>, name: &str) -> (PathBuf, String) {
    let out = capture.with_extension(name);
    let mut args = vec![
        "perfetto".to_string(),
        "--trace".into(),
        capture.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    if let Some(s) = symbols {
        args.extend(["--symbols".into(), s.display().to_string()]);
    }
    let (ok, _, err) = run_query(&args);
    assert!(ok, "{err}");
    (out, err)
}

/// The trace as check_trace.py decodes it: tracks, events, slices.
struct Decoded {
    tracks: Vec<Value>,
    events: Vec<Value>,
    slices: Vec<Value>,
}

impl Decoded {
    fn read(file: &Path) -> Decoded {
        let script = firmware_sources()
            .parent()
            .unwrap()
            .join("perfetto/check_trace.py");
        let o = Command::new("python3")
            .arg(&script)
            .arg(file)
            .env("PYTHONPATH", perfetto_python())
            .output()
            .expect("python3 is needed");
        assert!(
            o.status.success(),
            "{} rejected {}: {}",
            script.display(),
            file.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let list = |k: &str| v[k].as_array().unwrap().clone();
        Decoded {
            tracks: list("tracks"),
            events: list("events"),
            slices: list("slices"),
        }
    }

    /// The uuid of the track named `name`.
    fn track(&self, name: &str) -> u64 {
        let found: Vec<&Value> = self.tracks.iter().filter(|t| t["name"] == name).collect();
        assert_eq!(found.len(), 1, "tracks named {name:?} in {:?}", self.tracks);
        found[0]["uuid"].as_u64().unwrap()
    }

    /// The track names, with the root's first.
    fn track_names(&self) -> Vec<&str> {
        self.tracks
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect()
    }

    /// The events of track `uuid`, in file order.
    fn events_on(&self, uuid: u64) -> Vec<&Value> {
        self.events.iter().filter(|e| e["track"] == uuid).collect()
    }

    /// The slices of track `uuid`, by start.
    fn slices_on(&self, uuid: u64) -> Vec<&Value> {
        self.slices.iter().filter(|s| s["track"] == uuid).collect()
    }

    /// The MMIO device tracks: device name -> track uuid.
    fn device_tracks(&self) -> BTreeMap<String, u64> {
        self.tracks
            .iter()
            .filter_map(|t| {
                let name = t["name"].as_str()?.strip_prefix("MMIO ")?;
                Some((name.to_string(), t["uuid"].as_u64().unwrap()))
            })
            .collect()
    }
}

/// `trace-query --trace DIR [--symbols ELF] --format csv SQL`, rows split on
/// commas (none of the queried values holds one).
fn sql(capture: &Path, symbols: Option<&Path>, query: &str) -> Vec<Vec<String>> {
    let mut args = vec!["--trace".to_string(), capture.display().to_string()];
    if let Some(s) = symbols {
        args.extend(["--symbols".into(), s.display().to_string()]);
    }
    args.extend(["--format".into(), "csv".into(), query.into()]);
    let (ok, out, err) = run_query(&args);
    assert!(ok, "{err}");
    out.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// The root track says what the timestamps are, and the `capture` track's
/// one instant, at the capture's first icount, says it again.
fn check_the_timestamps_are_stated(d: &Decoded, capture: &Path, events: &str) {
    let root = &d.tracks[0];
    assert_eq!(root["parent"], Value::Null);
    let name = format!(
        "QEMU capture {} (1 ns = 1 guest instruction)",
        capture.file_name().unwrap().to_string_lossy()
    );
    assert_eq!(root["name"], name.as_str());
    assert!(
        root["description"].as_str().unwrap().contains(TIMESTAMPS),
        "{root}"
    );
    let info = d.events_on(d.track("capture"));
    assert_eq!(info.len(), 1);
    assert_eq!(info[0]["type"], "instant");
    assert_eq!(info[0]["name"], TIMESTAMPS);
    assert_eq!(info[0]["ts"], 0);
    assert_eq!(info[0]["args"]["events"], events);
    assert_eq!(
        info[0]["args"]["capture"],
        capture.display().to_string().as_str()
    );
    for t in &d.tracks[1..] {
        assert_eq!(t["parent"], root["uuid"], "{t}");
    }
}

/// `nm`'s address of function `name` in `elf`.
fn nm_address(nm: &str, elf: &Path, name: &str) -> u64 {
    let out = Command::new(nm).arg(elf).output().unwrap();
    assert!(out.status.success(), "{nm} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == name).then(|| u64::from_str_radix(f[0], 16).unwrap())
        })
        .unwrap_or_else(|| panic!("{nm}: no symbol {name}"))
}

/// The M3 firmware's 22 MMIO accesses, one instant each on its device's
/// track, exactly as the `mmio` table has them.
#[test]
fn every_mmio_access_is_an_instant_on_its_device_track() {
    let capture = capture_dir("perfetto/m3");
    run_capture(&capture, &["--events", "mem,mmio,insn"], &m3_qemu());
    let elf = firmware("m3.elf");
    let (file, stderr) = export(&capture, Some(&elf), "perfetto-trace");
    assert!(
        stderr.contains(
            "(22 MMIO events on 4 device tracks, 0 function slices on 1 vCPU tracks; \
             timestamps: 1 ns = 1 guest instruction)"
        ),
        "{stderr}"
    );
    let d = Decoded::read(&file);
    check_the_timestamps_are_stated(&d, &capture, "mem+mmio+insn");
    assert_eq!(
        d.track_names(),
        [
            "QEMU capture m3 (1 ns = 1 guest instruction)",
            "capture",
            "vCPU 0 functions",
            "MMIO PWM",
            "MMIO flash-control",
            "MMIO pl011",
            "MMIO systick",
        ]
    );

    // Events per device track = the mmio table's group-by.
    let devices = d.device_tracks();
    let counts: BTreeMap<String, usize> = sql(
        &capture,
        None,
        "select device, count(*) as n from mmio group by device order by device",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap()))
    .collect();
    let on_tracks: BTreeMap<String, usize> = devices
        .iter()
        .map(|(name, &uuid)| (name.clone(), d.events_on(uuid).len()))
        .collect();
    assert_eq!(on_tracks, counts);
    assert_eq!(
        counts,
        BTreeMap::from([
            ("PWM".to_string(), 1),
            ("flash-control".to_string(), 1),
            ("pl011".to_string(), 6),
            ("systick".to_string(), 14),
        ])
    );

    // Each access, in order: at its icount, with its physical address,
    // value, size, pc and symbol.
    let rows = sql(
        &capture,
        Some(&elf),
        "select device, icount, type, paddr, value, size, pc, symbol from mmio order by icount",
    );
    let mut next: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        let events = d.events_on(devices[&r[0]]);
        let i = next.entry(&r[0]).or_default();
        let e = events[*i];
        *i += 1;
        let num = |s: &str| s.parse::<u64>().unwrap();
        assert_eq!(e["type"], "instant");
        assert_eq!(e["ts"], num(&r[1]), "{r:?}: {e}");
        let kind = if r[2] == "W" { "write" } else { "read" };
        assert!(e["name"].as_str().unwrap().starts_with(kind), "{r:?}: {e}");
        let args = &e["args"];
        assert_eq!(args["paddr"], num(&r[3]), "{r:?}: {e}");
        assert_eq!(args["value"], num(&r[4]), "{r:?}: {e}");
        assert_eq!(args["size"], num(&r[5]), "{r:?}: {e}");
        assert_eq!(args["pc"], num(&r[6]), "{r:?}: {e}");
        assert_eq!(args["symbol"], r[7].as_str(), "{r:?}: {e}");
        assert_eq!(args["vcpu"], 0);
        assert_eq!(
            e["name"],
            format!("{kind} {:#x}", args["offset"].as_u64().unwrap()).as_str()
        );
    }

    // The register offsets in the devices' regions, and the values of the
    // firmware's README: the UART's data register gets `Hello\n`, SysTick
    // is set up (RVR, CVR, CSR), its CVR read 10 times, and stopped.
    let names = |dev: &str| -> Vec<String> {
        d.events_on(devices[dev])
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    let values = |dev: &str| -> Vec<u64> {
        d.events_on(devices[dev])
            .iter()
            .map(|e| e["args"]["value"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(names("pl011"), vec!["write 0x0"; 6]);
    let uart: Vec<u8> = values("pl011").iter().map(|&v| v as u8).collect();
    assert_eq!(uart, b"Hello\n");
    let pcs: Vec<u64> = d
        .events_on(devices["pl011"])
        .iter()
        .map(|e| e["args"]["pc"].as_u64().unwrap())
        .collect();
    assert_eq!(pcs, [0x16, 0x1a, 0x1e, 0x20, 0x24, 0x28]);
    let mut systick = vec!["write 0x4", "write 0x8", "write 0x0"];
    systick.extend(["read 0x8"; 10]);
    systick.push("write 0x0");
    assert_eq!(names("systick"), systick);
    assert_eq!(values("systick")[..3], [0x1000, 0, 5]);
    assert_eq!(values("systick")[13], 0);
    assert_eq!(names("flash-control"), ["read 0x0"]);
    assert_eq!(names("PWM"), ["write 0x0"]);
    assert_eq!(values("PWM"), [1]);

    // fw_main makes no call (README): the vCPU's track has no slice.
    assert_eq!(d.events_on(d.track("vCPU 0 functions")).len(), 0);
}

/// The IT-block firmware calls `blocks` 4 times from `reset_handler`: 4
/// slices, each from `blocks`' first instruction to the one after its call,
/// exactly where `trace-query execlog` shows the calls and returns.
#[test]
fn every_call_is_a_slice_on_its_vcpu_track() {
    let capture = capture_dir("perfetto/m3it");
    run_capture(
        &capture,
        &["--events", "mem,mmio,insn"],
        &lm3s6965evb_qemu("m3it.elf"),
    );
    let elf = firmware("m3it.elf");
    let blocks = nm_address("arm-none-eabi-nm", &elf, "blocks");

    // execlog: one line per instruction, line i at icount i (one vCPU,
    // captured from its first instruction), ending with its function.
    let (ok, log, err) = run_query(&[
        "execlog",
        "--trace",
        capture.to_str().unwrap(),
        "--symbols",
        elf.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let lines: Vec<(u64, String, String)> = log
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(", ").collect();
            let pc = u64::from_str_radix(f[1].trim_start_matches("0x"), 16).unwrap();
            let disas = f[3].trim_matches('"').to_string();
            let symbol = f[f.len() - 1].trim_matches(['<', '>']).to_string();
            (pc, disas, symbol)
        })
        .collect();
    assert_eq!(lines.len(), 3665, "the firmware README's count");
    // The expected slices: a call at icount c begins one at c + 1, which
    // ends at the first instruction at the call's return address.
    let mut expected = Vec::new();
    for (c, (pc, disas, _)) in lines.iter().enumerate() {
        if !disas.starts_with("bl ") {
            continue;
        }
        let ret = pc + 4; // `bl` is a 32-bit Thumb-2 instruction
        let end = (c + 1..lines.len())
            .find(|&i| lines[i].0 == ret)
            .expect("every call returns");
        assert_eq!(lines[c + 1].0, blocks);
        expected.push((c as u64 + 1, end as u64, *pc));
    }
    assert_eq!(expected.len(), 4);
    let entries = lines.iter().filter(|l| l.2 == "blocks").count();
    let in_blocks = lines
        .iter()
        .filter(|l| l.2 == "blocks" || l.2.starts_with("blocks+"))
        .count();
    assert_eq!(
        entries, 4,
        "calls to blocks, by the instructions at its start"
    );
    assert_eq!(in_blocks, 4 * 911, "the firmware README's count");

    for (symbols, name) in [
        (Some(elf.as_path()), "blocks".to_string()),
        (None, format!("{blocks:#010x}")),
    ] {
        let (file, stderr) = export(&capture, symbols, &format!("{name}.perfetto-trace"));
        assert!(
            stderr
                .contains("(0 MMIO events on 0 device tracks, 4 function slices on 1 vCPU tracks"),
            "{stderr}"
        );
        let d = Decoded::read(&file);
        check_the_timestamps_are_stated(&d, &capture, "mem+mmio+insn");
        let slices = d.slices_on(d.track("vCPU 0 functions"));
        let got: Vec<(u64, u64, u64)> = slices
            .iter()
            .map(|s| {
                assert_eq!(s["name"], name.as_str());
                assert_eq!(s["depth"], 0);
                assert_eq!(s["args"]["entry"], blocks);
                (
                    s["begin"].as_u64().unwrap(),
                    s["end"].as_u64().unwrap(),
                    s["args"]["call_site"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, expected);
        let duration: u64 = got.iter().map(|(b, e, _)| e - b).sum();
        assert_eq!(duration, in_blocks as u64);
    }
}

/// The two-vCPU AArch64 firmware: each vCPU calls its main function, which
/// never returns: one slice per vCPU track, open until the vCPU's last
/// instruction (its `final_icount`), and the GIC accesses on their tracks.
#[test]
fn each_vcpu_has_its_own_track_and_clock() {
    let capture = capture_dir("perfetto/a64");
    run_capture(&capture, &["--events", "mem,mmio,insn"], &a64_qemu());
    let elf = firmware("a64.elf");
    let (file, _) = export(&capture, Some(&elf), "perfetto-trace");
    let d = Decoded::read(&file);
    check_the_timestamps_are_stated(&d, &capture, "mem+mmio+insn");
    for (vcpu, main, call_site) in [
        (0u32, "cpu0_main", 0x4008001cu64),
        (1, "cpu1_main", 0x40080034),
    ] {
        let slices = d.slices_on(d.track(&format!("vCPU {vcpu} functions")));
        assert_eq!(slices.len(), 1, "vCPU {vcpu}: {slices:?}");
        let s = slices[0];
        assert_eq!(s["name"], main);
        assert_eq!(
            s["args"]["entry"],
            nm_address("aarch64-linux-gnu-nm", &elf, main)
        );
        assert_eq!(s["args"]["call_site"], call_site);
        // Begins after the call: the instruction after the `bl` of
        // `_start` (icount 7) or `secondary_entry` (icount 4).
        let call_icount = sql(
            &capture,
            None,
            &format!("select icount from insn where vcpu = {vcpu} and pc = {call_site}"),
        );
        assert_eq!(call_icount.len(), 1);
        let c: u64 = call_icount[0][0].parse().unwrap();
        assert_eq!(s["begin"], c + 1);
        assert_eq!(s["end"], stat(&capture, "final_icount", Some(vcpu)));
    }
    // The MMIO accesses, per vCPU and device, on the device tracks.
    let devices = d.device_tracks();
    let mut on_tracks: Vec<(String, u64, u64)> = Vec::new();
    for (name, &uuid) in &devices {
        for e in d.events_on(uuid) {
            on_tracks.push((
                name.clone(),
                e["args"]["vcpu"].as_u64().unwrap(),
                e["ts"].as_u64().unwrap(),
            ));
        }
    }
    on_tracks.sort();
    let rows: Vec<(String, u64, u64)> = sql(
        &capture,
        None,
        "select device, vcpu, icount from mmio order by device, vcpu, icount",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap(), r[2].parse().unwrap()))
    .collect();
    assert_eq!(on_tracks, rows);
    // GICD_CTLR, GICC_PMR, GICC_CTLR by vCPU 0, GICD_SGIR by vCPU 1.
    let named: Vec<(String, String, u64)> = devices
        .iter()
        .flat_map(|(dev, &uuid)| {
            d.events_on(uuid).into_iter().map(move |e| {
                (
                    dev.clone(),
                    e["name"].as_str().unwrap().to_string(),
                    e["args"]["value"].as_u64().unwrap(),
                )
            })
        })
        .collect();
    assert_eq!(
        named,
        [
            ("gic_cpu".to_string(), "write 0x4".to_string(), 0xff),
            ("gic_cpu".to_string(), "write 0x0".to_string(), 0x1),
            ("gic_dist".to_string(), "write 0x0".to_string(), 0x1),
            ("gic_dist".to_string(), "write 0xf00".to_string(), 0x10000),
        ]
    );
}

/// A capture with neither `mmio` nor `insn` is an error naming both (and
/// leaves no file), and a file that cannot be written is named.
#[test]
fn what_cannot_be_exported_is_a_clear_error() {
    let capture = capture_dir("perfetto/empty");
    std::fs::create_dir_all(capture.join("stats")).unwrap();
    let src = capture_dir("perfetto/stats-only");
    run_capture(&src, &["--events", "mmio"], &m3_qemu());
    for part in std::fs::read_dir(src.join("stats")).unwrap() {
        let part = part.unwrap().path();
        std::fs::copy(&part, capture.join("stats").join(part.file_name().unwrap())).unwrap();
    }
    let out = capture.with_extension("perfetto-trace");
    let _ = std::fs::remove_file(&out); // an earlier run's
    let (ok, _, err) = run_query(&[
        "perfetto",
        "--trace",
        capture.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("perfetto needs the 'mmio' table (record mmio or mem) or the 'insn' table")
            && err.contains("has neither (tables: stats)"),
        "{err}"
    );
    // No trace, not even an empty or partial one.
    assert!(!out.exists());
    assert!(!capture.with_extension("perfetto-trace.partial").exists());

    let (ok, _, err) = run_query(&[
        "perfetto",
        "--trace",
        src.to_str().unwrap(),
        "--out",
        "/nonexistent-dir/x.perfetto-trace",
    ]);
    assert!(!ok);
    assert!(
        err.contains("creating /nonexistent-dir/x.perfetto-trace.partial: No such file"),
        "{err}"
    );
}
