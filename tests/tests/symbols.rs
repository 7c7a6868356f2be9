//! `trace-query --symbols FILE`: the function and offset of every row's
//! `pc`, from the firmware's ELF and from a System.map-style file, checked
//! against binutils' `nm` (an independent reading of the same symbols) for
//! every row of real captures.

use std::path::Path;
use std::process::Command;
use trace_tests::*;

/// `nm -n -S` of `elf`: (start, size, name) of its text symbols with a size.
fn nm_functions(nm: &str, elf: &Path) -> Vec<(u64, u64, String)> {
    let out = Command::new(nm)
        .arg("-n")
        .arg("-S")
        .arg(elf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{nm} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && matches!(f[2], "T" | "t")).then(|| {
                (
                    u64::from_str_radix(f[0], 16).unwrap(),
                    u64::from_str_radix(f[1], 16).unwrap(),
                    f[3].to_string(),
                )
            })
        })
        .collect()
}

/// The symbol `nm` says `pc` is in, as `name+0xoff`.
fn expected(functions: &[(u64, u64, String)], pc: u64) -> String {
    let (start, _, name) = functions
        .iter()
        .find(|(start, size, _)| (*start..start + size).contains(&pc))
        .unwrap_or_else(|| panic!("nm has no function at {pc:#x}"));
    match pc - start {
        0 => name.clone(),
        off => format!("{name}+{off:#x}"),
    }
}

/// `select pc, symbol from TABLE` as (pc, symbol) pairs.
fn pcs_and_symbols(trace: &Path, symbols: &Path, table: &str) -> Vec<(u64, String)> {
    let (ok, out, err) = run_query(&[
        "--trace",
        &trace.display().to_string(),
        "--symbols",
        &symbols.display().to_string(),
        "--format",
        "csv",
        &format!("select pc, symbol from {table}"),
    ]);
    assert!(ok, "{err}");
    out.lines()
        .skip(1)
        .map(|l| {
            let (pc, sym) = l.split_once(',').unwrap();
            (pc.parse().unwrap(), sym.to_string())
        })
        .collect()
}

#[test]
fn the_firmware_elf_names_every_pc() {
    let out = capture_dir("symbols/m3");
    run_capture(&out, &["--events", "mem,mmio,insn"], &m3_qemu());
    let elf = firmware("m3.elf");
    let functions = nm_functions("arm-none-eabi-nm", &elf);

    // The 22 MMIO accesses are all in fw_main, at the offsets nm gives.
    let mmio = pcs_and_symbols(&out, &elf, "mmio");
    assert_eq!(mmio.len(), 22);
    for (pc, sym) in &mmio {
        assert!(sym.starts_with("fw_main+0x"), "{pc:#x}: {sym}");
        assert_eq!(*sym, expected(&functions, *pc));
    }
    // Every executed instruction: the reset handler's one branch, then
    // fw_main (test firmware README).
    let insn = pcs_and_symbols(&out, &elf, "insn");
    assert_eq!(insn.len(), table(&out, "insn").unwrap().height());
    assert_eq!(insn[0].1, "reset_handler");
    assert_eq!(insn[1].1, "fw_main");
    for (pc, sym) in &insn {
        assert_eq!(*sym, expected(&functions, *pc));
    }
    // The same for mem, and code's symbol becomes name+offset too.
    for t in ["mem", "code"] {
        for (pc, sym) in pcs_and_symbols(&out, &elf, t) {
            assert_eq!(sym, expected(&functions, pc), "{t}");
        }
    }
    // The functions themselves, as a table.
    let (ok, csv, err) = run_query(&[
        "--trace",
        &out.display().to_string(),
        "--symbols",
        &elf.display().to_string(),
        "--format",
        "csv",
        "select name, start, \"end\" from symbols order by start",
    ]);
    assert!(ok, "{err}");
    let want: String = functions
        .iter()
        .filter(|f| f.2 != "vector_table") // data in .text: not an ELF function
        .map(|(s, z, n)| format!("{n},{s},{}\n", s + z))
        .collect();
    assert_eq!(csv, format!("name,start,end\n{want}"));
}

/// `trace-query execlog --symbols` and `bufmon --symbols`: the same lines
/// as without, each ending with the function of its instruction (bufmon:
/// of its caller, unknown here, and of the accessing instruction).
#[test]
fn the_analyzers_name_their_instructions() {
    let out = capture_dir("symbols/m3-analyzers");
    run_capture(&out, &["--events", "mem,mmio,insn"], &m3_qemu());
    let elf = firmware("m3.elf");
    let functions = nm_functions("arm-none-eabi-nm", &elf);
    let trace = out.display().to_string();
    let elf_arg = elf.display().to_string();
    let run = |args: &[&str]| {
        let (ok, out, err) = run_query(args);
        assert!(ok, "{err}");
        out
    };

    let plain = run(&["execlog", "--trace", &trace]);
    let named = run(&["execlog", "--trace", &trace, "--symbols", &elf_arg]);
    assert_eq!(plain.lines().count(), named.lines().count());
    for (p, n) in plain.lines().zip(named.lines()) {
        let pc = u64::from_str_radix(p.split(", ").nth(1).unwrap().trim_start_matches("0x"), 16)
            .unwrap();
        assert_eq!(n, format!("{p}, <{}>", expected(&functions, pc)));
    }

    let buffers = out.with_extension("buffers");
    std::fs::write(&buffers, "20000000 14 0\n").unwrap();
    let buffers = buffers.display().to_string();
    let plain = run(&["bufmon", "--trace", &trace, "--buffers", &buffers]);
    let named = run(&[
        "bufmon",
        "--trace",
        &trace,
        "--buffers",
        &buffers,
        "--symbols",
        &elf_arg,
    ]);
    // buf and sum: 16 byte stores, 4 word stores, 4 word loads, 1 word store.
    assert_eq!(plain.lines().count(), 25);
    assert_eq!(plain.lines().count(), named.lines().count());
    for (p, n) in plain.lines().zip(named.lines()) {
        let pc = u64::from_str_radix(p.split(' ').nth(3).unwrap(), 16).unwrap();
        assert_eq!(n, format!("{p} <?> <{}>", expected(&functions, pc)));
    }
}

#[test]
fn a_system_map_names_every_pc_of_both_vcpus() {
    let out = capture_dir("symbols/a64");
    run_capture(&out, &["--events", "mem,mmio"], &a64_qemu());
    let elf = firmware("a64.elf");
    let functions = nm_functions("aarch64-linux-gnu-nm", &elf);
    // A System.map as the kernel's build makes it: `nm -n`, no sizes.
    let map = out.join("System.map");
    let nm = Command::new("aarch64-linux-gnu-nm")
        .arg("-n")
        .arg(&elf)
        .output()
        .unwrap();
    std::fs::write(&map, nm.stdout).unwrap();

    let (ok, csv, err) = run_query(&[
        "--trace",
        &out.display().to_string(),
        "--symbols",
        &map.display().to_string(),
        "--format",
        "csv",
        "select vcpu, pc, symbol from mem",
    ]);
    assert!(ok, "{err}");
    let rows: Vec<(u32, u64, String)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_string(),
            )
        })
        .collect();
    assert_eq!(rows.len(), table(&out, "mem").unwrap().height());
    for (vcpu, pc, sym) in &rows {
        assert_eq!(*sym, expected(&functions, *pc));
        let main = format!("cpu{vcpu}_main+0x");
        assert!(sym.starts_with(&main), "vCPU {vcpu} at {pc:#x}: {sym}");
    }
}

#[test]
fn bad_symbol_files_are_clear_errors() {
    let out = capture_dir("symbols/bad");
    run_capture(&out, &["--events", "mmio"], &m3_qemu());
    let trace = out.display().to_string();
    let run = |file: &Path| {
        let (ok, _, err) = run_query(&[
            "--trace",
            &trace,
            "--symbols",
            &file.display().to_string(),
            "select symbol from mmio",
        ]);
        assert!(!ok);
        err
    };
    let missing = out.join("no-such-file");
    assert!(run(&missing).contains("no-such-file"));

    let text = out.join("notes.txt");
    std::fs::write(&text, "this is not a symbol file\n").unwrap();
    let err = run(&text);
    assert!(err.contains("notes.txt") && err.contains("line 1"), "{err}");

    let stripped = out.join("stripped.elf");
    let status = Command::new("arm-none-eabi-strip")
        .arg("-o")
        .arg(&stripped)
        .arg(firmware("m3.elf"))
        .status()
        .unwrap();
    assert!(status.success());
    let err = run(&stripped);
    assert!(
        err.contains("stripped.elf") && err.contains("no symbol table"),
        "{err}"
    );
}
