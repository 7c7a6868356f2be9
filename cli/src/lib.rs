//! What the project's two binaries share at their surface: shell completions
//! and man pages from their clap commands (the `completions` and `man`
//! subcommands of `trace-collector` and `trace-query`), and the allocator
//! setting both start with.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::Command;

pub use clap_complete::Shell;

/// Writes `shell`'s completion script for `cmd` (the binary `name`).
pub fn completions(shell: Shell, mut cmd: Command, name: &str, out: &mut dyn Write) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    let mut script = String::from_utf8(script).context("the completion script is not UTF-8")?;
    if shell == Shell::Bash {
        // clap_complete 4.6 spells a hyphenated binary's subcommand states two
        // ways in its bash script (`trace__query__subcmd__bufmon` where it
        // tracks the words, `trace__subcmd__query__subcmd__bufmon` in the case
        // arms that complete them), so no subcommand's options complete
        // (clap-rs/clap#6421, open). Spell the arms as the words are tracked.
        let escaped = name.replace('-', "__");
        let misspelled = name.replace('-', "__subcmd__");
        script = script.replace(
            &format!("{misspelled}__subcmd__"),
            &format!("{escaped}__subcmd__"),
        );
    }
    out.write_all(script.as_bytes())?;
    Ok(())
}

/// Writes `cmd`'s man page (roff) to `out`, or, given `dir`, one page per
/// subcommand into it (`name.1`, `name-sub.1`, ...).
pub fn man_pages(cmd: Command, dir: Option<&Path>, out: &mut dyn Write) -> Result<()> {
    match dir {
        None => clap_mangen::Man::new(cmd).render(out)?,
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Makes glibc's malloc keep the memory of freed batches for the next ones.
/// Process-wide: each binary calls it first thing.
///
/// Both binaries handle data in batches of column vectors (a few MiB each):
/// the collector's parts, trace-query's parts as it reads them. By default
/// glibc gives such blocks back to the kernel (`munmap`, heap trimming) and
/// the next batch faults every page in again, zeroed, while threads that
/// fault wait on the process's memory map lock. The collector: about a fifth
/// of a `mem` capture's CPU went to the kernel (m3loop, 10M iterations: 2.4 s
/// of system time, 0.5 s with this, 11% less wall time). trace-query's
/// group-by over the boot's `mem` parts, two threads: 1.86 s wall (1.53 s of
/// it system time) against 1.14 s with this (benches/RESULTS.md). Peak memory
/// is the same: freed blocks are reused.
pub fn keep_freed_memory() {
    // 32 MiB is the largest threshold glibc accepts (64-bit); every batch
    // vector is below it. -1 disables trimming the heap top.
    // Safety: mallopt only sets allocator tunables; any value is accepted
    // or refused, never unsound.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}
