//! Shell completions and man pages of a binary, from its clap command: the
//! `completions` and `man` subcommands of `trace-collector` and `trace-query`.

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
