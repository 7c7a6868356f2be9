//! Register offsets: where an MMIO access falls in its device's memory
//! region, the `addr` QEMU hands the device's read/write callback (SysTick's
//! current value register is offset 0x8 of `v7m_systick`, at 0xe000e018).
//!
//! The `mmio` table has the physical address; the region's start is in the
//! capture's `mtree.txt`, QEMU's `info mtree -f`: the flat view of vCPU 0's
//! address space (`cpu-memory-0`, else the system `memory`), one line per
//! range, `<first>-<last> (prio P, KIND): NAME[ @OFFSET]`, where `OFFSET` is
//! the range's offset in its region when the range does not start the
//! region (a region partly covered by another shows up as several ranges).
//! The collector reads the same view for device names
//! (collector/src/qemu/memory_map.rs); this reader keeps the offsets, which
//! the collector has no use for.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// One range of the flat view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    first: u64,
    last: u64,
    /// Offset of `first` in its memory region.
    offset_in_region: u64,
}

/// The ranges of the flat view, by address.
#[derive(Debug, Clone, Default)]
pub struct RegionOffsets {
    ranges: Vec<Range>,
}

impl RegionOffsets {
    /// Reads `path` (a capture's `mtree.txt`); errors name the file.
    pub fn load(path: &Path) -> Result<RegionOffsets> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        RegionOffsets::parse(&text).with_context(|| format!("{}", path.display()))
    }

    /// Parses `info mtree -f` output.
    pub fn parse(text: &str) -> Result<RegionOffsets> {
        // (address-space names, ranges) of each flat view.
        let mut views: Vec<(Vec<&str>, Vec<Range>)> = Vec::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with("FlatView #") {
                views.push((Vec::new(), Vec::new()));
            } else if let Some(rest) = t.strip_prefix("AS \"") {
                if let (Some(v), Some(name)) = (views.last_mut(), rest.split('"').next()) {
                    v.0.push(name);
                }
            } else if let Some(r) = parse_range(t) {
                if let Some(v) = views.last_mut() {
                    v.1.push(r);
                }
            }
        }
        let pick = |want: &str| views.iter().position(|(names, _)| names.contains(&want));
        let Some(i) = pick("cpu-memory-0").or_else(|| pick("memory")) else {
            bail!("no flat view of \"cpu-memory-0\" or \"memory\" (expected `info mtree -f`)");
        };
        let mut ranges = views.swap_remove(i).1;
        ranges.sort_by_key(|r| r.first);
        Ok(RegionOffsets { ranges })
    }

    /// The offset of `paddr` in its memory region; None outside the map.
    pub fn offset(&self, paddr: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|r| r.first <= paddr);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (paddr <= r.last).then(|| paddr - r.first + r.offset_in_region)
    }
}

/// `00000000e000e0f0-00000000e000efff (prio 0, i/o): nvic_sysregs @00000000000000f0`
fn parse_range(line: &str) -> Option<Range> {
    let (span, rest) = line.split_once(' ')?;
    let (first, last) = span.split_once('-')?;
    let first = u64::from_str_radix(first, 16).ok()?;
    let last = u64::from_str_radix(last, 16).ok()?;
    let (_, name) = rest.trim().strip_prefix('(')?.split_once("): ")?;
    let offset_in_region = match name.rsplit_once(" @") {
        Some((_, off)) => u64::from_str_radix(off.trim(), 16).ok()?,
        None => 0,
    };
    (first <= last).then_some(Range {
        first,
        last,
        offset_in_region,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Excerpt of lm3s6965evb's `info mtree -f` (QEMU 10.0.2).
    const LM3S: &str = "\
FlatView #0
 AS \"memory\", root: system
 Root memory region: system
  000000004000c000-000000004000cfff (prio 0, i/o): pl011

FlatView #2
 AS \"cpu-memory-0\", root: armv7m-container
 Root memory region: armv7m-container
  0000000020000000-000000002000ffff (prio 0, ram): stellaris.sram
  000000004000c000-000000004000cfff (prio 0, i/o): pl011
  00000000e000e000-00000000e000e00f (prio 0, i/o): nvic_sysregs
  00000000e000e010-00000000e000e0ef (prio 1, i/o): v7m_systick
  00000000e000e0f0-00000000e000efff (prio 0, i/o): nvic_sysregs @00000000000000f0
";

    #[test]
    fn offsets_in_the_cpu_view() {
        let m = RegionOffsets::parse(LM3S).unwrap();
        assert_eq!(m.offset(0x4000c000), Some(0), "pl011 DR");
        assert_eq!(m.offset(0x4000c018), Some(0x18), "pl011 FR");
        assert_eq!(m.offset(0xe000e010), Some(0), "SysTick CSR");
        assert_eq!(m.offset(0xe000e018), Some(8), "SysTick CVR");
        assert_eq!(m.offset(0xe000e004), Some(4), "NVIC ICTR");
        assert_eq!(
            m.offset(0xe000ed00),
            Some(0xd00),
            "NVIC CPUID, past SysTick"
        );
        assert_eq!(m.offset(0x30000000), None);
        assert_eq!(m.offset(0xe000f000), None);
    }

    #[test]
    fn a_file_without_a_flat_view_is_an_error() {
        let e = RegionOffsets::parse("address-space: memory\n  0-1 (prio 0, i/o): x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no flat view"), "{e}");
    }
}
