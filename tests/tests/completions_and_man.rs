//! The two binaries' shell completions and man pages: bash completes their
//! subcommands and options from the script each prints, and `man --out-dir`
//! writes one page per subcommand.

use std::path::Path;
use std::process::Command;

use trace_tests::*;

/// What bash's completion function, loaded from `binary completions bash`,
/// offers for the command line `words` (the last word being completed).
fn bash_completes(binary: &Path, words: &[&str]) -> Vec<String> {
    let name = binary.file_name().unwrap().to_str().unwrap();
    let script = format!(
        r#"source <("{bin}" completions bash) || exit 3
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
fn=$(complete -p {name} | sed -E 's/.* -F ([^ ]+) .*/\1/')
"$fn" {name} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        bin = binary.display(),
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut offered: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    offered.sort();
    offered
}

#[test]
fn bash_completes_subcommands_and_options() {
    assert_eq!(
        bash_completes(&query(), &["trace-query", "mm"]),
        ["mmio-json"]
    );
    assert_eq!(
        bash_completes(&query(), &["trace-query", "mmio-json", "--ph"]),
        ["--phys"]
    );
    assert_eq!(
        bash_completes(&collector(), &["trace-collector", "a"]),
        ["attach"]
    );
    assert_eq!(
        bash_completes(&collector(), &["trace-collector", "attach", "--until"]),
        ["--until-device", "--until-icount", "--until-pc"]
    );
}

#[test]
fn man_pages_one_per_subcommand() {
    for (binary, name, subcommands) in [
        (
            collector(),
            "trace-collector",
            &["attach", "completions", "man", "run"][..],
        ),
        (
            query(),
            "trace-query",
            &[
                "bufmon",
                "completions",
                "execlog",
                "man",
                "mmio-json",
                "perfetto",
                "timeline",
            ][..],
        ),
    ] {
        let dir = capture_dir(&format!("man-{name}"));
        let out = Command::new(&binary)
            .args(["man", "--out-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pages: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        pages.sort();
        let mut expected: Vec<String> = subcommands
            .iter()
            .map(|s| format!("{name}-{s}.1"))
            .chain([format!("{name}.1")])
            .collect();
        expected.sort();
        assert_eq!(pages, expected);
        for page in &pages {
            let text = std::fs::read_to_string(dir.join(page)).unwrap();
            let title = page.trim_end_matches(".1");
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!(".TH {title} 1 "))),
                "{page} has no .TH {title} 1 line"
            );
        }
        // Without --out-dir: the main page on stdout.
        let out = Command::new(&binary).arg("man").output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!(".TH {name} 1 "))),
            "{text}"
        );
    }
}
