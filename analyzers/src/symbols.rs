//! `--symbols FILE`: function names for guest addresses, so that people read
//! `uart_putc+0x12`, not `0x00000134`. FILE is an ELF with a symbol table
//! (the firmware or `vmlinux`), or a `System.map`-style text file (`nm`'s
//! output: `<hex address> <type> <name>` per line).

use std::path::Path;

use anyhow::{bail, Context, Result};
use polars::prelude::*;

/// Function symbols, sorted by address.
#[derive(Debug, Clone, Default)]
pub struct Symbols {
    /// (start, end or 0 when unknown, name).
    entries: Vec<(u64, u64, String)>,
}

impl Symbols {
    pub fn load(path: &Path) -> Result<Symbols> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let what = path.display();
        let mut entries = if bytes.starts_with(b"\x7fELF") {
            elf_functions(&bytes).with_context(|| format!("{what}: not an ELF we can read"))?
        } else {
            let text = std::str::from_utf8(&bytes)
                .with_context(|| format!("{what}: neither ELF nor System.map text"))?;
            system_map_functions(text).with_context(|| format!("{what}"))?
        };
        if entries.is_empty() {
            bail!("{what}: no function symbols");
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        entries.dedup_by_key(|e| e.0);
        Ok(Symbols { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `name+0xoff` (or `name` at its start) of the function holding `addr`:
    /// the symbol at or below it, within its size when the file gives one,
    /// else before the next symbol.
    pub fn name(&self, addr: u64) -> Option<String> {
        let i = self
            .entries
            .partition_point(|e| e.0 <= addr)
            .checked_sub(1)?;
        let (start, end, name) = &self.entries[i];
        let end = match *end {
            0 => self.entries.get(i + 1).map_or(u64::MAX, |e| e.0),
            e => e,
        };
        (addr < end).then(|| match addr - start {
            0 => name.clone(),
            off => format!("{name}+{off:#x}"),
        })
    }

    /// A polars expression: the symbol of the addresses in `column`.
    pub fn expr(&self, column: &str) -> Expr {
        let me = self.clone();
        col(column)
            .map(
                move |c: Column| {
                    let addrs = c.cast(&DataType::UInt64)?;
                    let names: StringChunked = addrs
                        .u64()?
                        .iter()
                        .map(|a| a.and_then(|a| me.name(a)))
                        .collect();
                    Ok(names.with_name(c.name().clone()).into_column())
                },
                |_, f| Ok(Field::new(f.name().clone(), DataType::String)),
            )
            .alias("symbol")
    }

    /// The symbols as a table: `name`, `start`, `end` (null when unknown).
    pub fn table(&self) -> Result<DataFrame> {
        let name: Vec<&str> = self.entries.iter().map(|e| e.2.as_str()).collect();
        let start: Vec<u64> = self.entries.iter().map(|e| e.0).collect();
        let end: Vec<Option<u64>> = self
            .entries
            .iter()
            .map(|e| (e.1 != 0).then_some(e.1))
            .collect();
        Ok(DataFrame::new_infer_height(vec![
            Column::new("name".into(), name),
            Column::new("start".into(), start),
            Column::new("end".into(), end),
        ])?)
    }
}

/// `nm`/System.map lines: `<hex address> <type> <name>`; text symbols only
/// (types `T`, `t`, `W`, `w`).
fn system_map_functions(text: &str) -> Result<Vec<(u64, u64, String)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(ty), Some(name)) = (f.next(), f.next(), f.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            bail!("line {}: not `<address> <type> <name>`: {line:?}", n + 1);
        };
        let addr = u64::from_str_radix(addr, 16)
            .with_context(|| format!("line {}: {addr:?} is not a hex address", n + 1))?;
        if matches!(ty, "T" | "t" | "W" | "w") {
            out.push((addr, 0, name.to_string()));
        }
    }
    Ok(out)
}

/// The function symbols (STT_FUNC, defined) of a little-endian ELF's
/// `.symtab` (else `.dynsym`). On 32-bit Arm, bit 0 of a Thumb function's
/// address is cleared.
fn elf_functions(b: &[u8]) -> Result<Vec<(u64, u64, String)>> {
    let get = |at: usize, n: usize| -> Result<u64> {
        let s = b.get(at..at + n).context("truncated")?;
        Ok(s.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64))
    };
    let is64 = match b.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => bail!("unknown ELF class"),
    };
    if b.get(5) != Some(&1) {
        bail!("big-endian ELF is not supported");
    }
    let machine = get(18, 2)?;
    let (shoff, shentsize, shnum) = if is64 {
        (get(0x28, 8)?, get(0x3a, 2)?, get(0x3c, 2)?)
    } else {
        (get(0x20, 4)?, get(0x2e, 2)?, get(0x30, 2)?)
    };
    // Section i: (type, offset, size, link, entsize).
    let section = |i: u64| -> Result<(u64, u64, u64, u64, u64)> {
        let at = (shoff + i * shentsize) as usize;
        Ok(if is64 {
            (
                get(at + 4, 4)?,
                get(at + 0x18, 8)?,
                get(at + 0x20, 8)?,
                get(at + 0x28, 4)?,
                get(at + 0x38, 8)?,
            )
        } else {
            (
                get(at + 4, 4)?,
                get(at + 0x10, 4)?,
                get(at + 0x14, 4)?,
                get(at + 0x18, 4)?,
                get(at + 0x24, 4)?,
            )
        })
    };
    const SHT_SYMTAB: u64 = 2;
    const SHT_DYNSYM: u64 = 11;
    let mut table = None;
    for i in 0..shnum {
        let s = section(i)?;
        if s.0 == SHT_SYMTAB || (s.0 == SHT_DYNSYM && table.is_none()) {
            table = Some(s);
        }
    }
    let Some((_, off, size, link, entsize)) = table else {
        bail!("no symbol table (stripped?)");
    };
    let (_, stroff, strsize, _, _) = section(link)?;
    let strings = b
        .get(stroff as usize..(stroff + strsize) as usize)
        .context("truncated string table")?;
    let mut out = Vec::new();
    let entsize = entsize.max(1);
    for k in 0..size / entsize {
        let at = (off + k * entsize) as usize;
        let (name, info, shndx, value, sz) = if is64 {
            (
                get(at, 4)?,
                get(at + 4, 1)?,
                get(at + 6, 2)?,
                get(at + 8, 8)?,
                get(at + 16, 8)?,
            )
        } else {
            (
                get(at, 4)?,
                get(at + 12, 1)?,
                get(at + 14, 2)?,
                get(at + 4, 4)?,
                get(at + 8, 4)?,
            )
        };
        const STT_FUNC: u64 = 2;
        if info & 0xf != STT_FUNC || shndx == 0 {
            continue;
        }
        let name = strings.get(name as usize..).unwrap_or_default();
        let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
        const EM_ARM: u64 = 40;
        let start = if machine == EM_ARM { value & !1 } else { value };
        let end = if sz > 0 { start + sz } else { 0 };
        out.push((start, end, String::from_utf8_lossy(name).into_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_within_a_symbol_or_before_the_next() {
        let s = Symbols {
            entries: vec![
                (0x100, 0x110, "a".into()),
                (0x200, 0, "b".into()),
                (0x300, 0, "c".into()),
            ],
        };
        assert_eq!(s.name(0x100).as_deref(), Some("a"));
        assert_eq!(s.name(0x10e).as_deref(), Some("a+0xe"));
        assert_eq!(s.name(0x110), None, "past a's size");
        assert_eq!(s.name(0x2ff).as_deref(), Some("b+0xff"));
        assert_eq!(s.name(0x50), None);
    }

    #[test]
    fn system_map_lines() {
        let f = system_map_functions(
            "ffff800008000000 T _text\nffff800008010000 t helper\nffff800009000000 D data\n\n",
        )
        .unwrap();
        assert_eq!(f.len(), 2);
        assert!(system_map_functions("zz T x")
            .unwrap_err()
            .to_string()
            .contains("not a hex address"));
        assert!(system_map_functions("oops")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }
}
