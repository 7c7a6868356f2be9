//! `mtree.txt`: QEMU's memory map (`info mtree -f`) as the collector saved
//! it, read back. The collector names each MMIO access's device from it;
//! readers take the offset of an access into its region from it
//! (`trace-query mmio-json --phys offset`).
//!
//! The map changes while a guest runs (firmware and the OS assign PCI
//! BARs, enable windows such as x86's MMCONFIG): when the collector meets
//! an I/O access at an address that is not I/O in the map it has, it reads
//! the map again and appends it to mtree.txt after a [`VERSION_MARK`] line
//! saying when and why. [`MemoryMap::parse`] reads the last version (every
//! region mapped so far); [`versions`] lists them all.

/// The line that starts each version of the map after the first in
/// mtree.txt: `#### trace-collector memory map version N: <why>`.
pub const VERSION_MARK: &str = "#### trace-collector memory map version ";

/// The versions of the map in mtree.txt's `text`: (the marker line's
/// text after [`VERSION_MARK`], or "" for the first; that version's text).
pub fn versions(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut header = "";
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix(VERSION_MARK) {
            out.push((header, &text[start..at]));
            header = rest.trim_end();
            start = at + line.len();
        }
        at += line.len();
    }
    out.push((header, &text[start..]));
    out
}

/// The marker line of version `n` (2 and up), read because of `why`.
pub fn version_line(n: usize, why: &str) -> String {
    format!("{VERSION_MARK}{n}: {why}\n")
}

/// QEMU region names whose well-known short name the `device` column
/// gives instead (where QEMU's name says little: a model number, an
/// internal name), per board. docs/capture-format.md lists them (a test
/// checks it).
pub const SHORT_NAMES: &[(&str, &str)] = &[
    // Cortex-M (lm3s6965evb, mps2-*): the core's own devices.
    ("v7m_systick", "systick"),
    ("nvic_sysregs", "nvic"),
    ("nvic-default", "nvic"),
    ("cmsdk-apb-watchdog", "watchdog"),
    // lm3s6965evb
    ("ssys", "sysctl"),
    ("gptm", "timer"),
    // mps2-*
    ("mps2-fpgaio", "fpgaio"),
    ("mps2-scc", "scc"),
    ("cmsdk-apb-timer", "timer"),
    ("cmsdk-apb-dualtimer", "dualtimer"),
    // virt (Arm)
    ("gicv3_dist", "gic_dist"),
    ("gicv3_redist_region[0]", "gic_redist"),
    ("pl031", "rtc"),
    ("fwcfg.ctl", "fw_cfg"),
    ("fwcfg.data", "fw_cfg"),
    ("fwcfg.dma", "fw_cfg"),
    // virt, q35: PCI Express configuration space (ECAM, MMCONFIG on x86).
    ("pcie-mmcfg-mmio", "pcie_ecam"),
    ("gpex_ioport_window", "pcie_pio"),
    // q35, pc
    ("apic-msi", "lapic"),
];

/// The well-known short name of QEMU's region `name`, if it has one.
pub fn short_name(name: &str) -> Option<&'static str> {
    SHORT_NAMES
        .iter()
        .find(|(q, _)| *q == name)
        .map(|(_, s)| *s)
}

/// One range of QEMU's flat view: the most specific region at each address
/// in `start..=end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    /// Inclusive, as QEMU prints it.
    pub end: u64,
    /// `ram`, `rom`, `romd`, `i/o`, ...
    pub kind: String,
    /// QEMU's name, without the ` @offset` suffix of aliases.
    pub name: String,
    /// Where `start` lies in the region (QEMU's ` @offset`; 0 when the
    /// range starts where the region does).
    pub offset: u64,
}

impl Region {
    /// The offset of `addr` into the region: what QEMU hands the device's
    /// read and write functions (and what PANDA's mmio_trace logs as
    /// `phys_addr`).
    pub fn offset_of(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// The flat view of one address space: non-overlapping regions by address.
#[derive(Clone, Debug, Default)]
pub struct MemoryMap {
    regions: Vec<Region>,
    /// The address space the view was taken from.
    pub address_space: String,
}

impl MemoryMap {
    /// Parses `info mtree -f` (mtree.txt: its last version), keeping the
    /// flat view of vCPU 0's address space (`cpu-memory-0`; the system
    /// `memory` view when there is none).
    pub fn parse(text: &str) -> Result<MemoryMap, String> {
        let last = versions(text).last().map_or(text, |v| v.1);
        MemoryMap::parse_one(last)
    }

    /// Parses one `info mtree -f` output.
    fn parse_one(text: &str) -> Result<MemoryMap, String> {
        let mut views: Vec<(Vec<String>, Vec<Region>)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.starts_with("FlatView #") {
                views.push((Vec::new(), Vec::new()));
            } else if let Some(rest) = t.strip_prefix("AS \"") {
                let name = rest.split('"').next().unwrap_or("").to_string();
                if let Some(v) = views.last_mut() {
                    v.0.push(name);
                }
            } else if let Some(region) = parse_region(t) {
                match views.last_mut() {
                    Some(v) => v.1.push(region),
                    None => return Err(format!("line {}: a region before any \"FlatView\" header: is this `info mtree -f`?", n + 1)),
                }
            }
        }
        let pick = |want: &str| {
            views
                .iter()
                .position(|(names, _)| names.iter().any(|n| n == want))
        };
        let i = pick("cpu-memory-0")
            .or_else(|| pick("memory"))
            .ok_or_else(|| "no flat view of \"cpu-memory-0\" or \"memory\" (expected the output of `info mtree -f`)".to_string())?;
        let (names, mut regions) = views.swap_remove(i);
        regions.sort_by_key(|r| r.start);
        let address_space = if names.iter().any(|n| n == "cpu-memory-0") {
            "cpu-memory-0"
        } else {
            "memory"
        };
        Ok(MemoryMap {
            regions,
            address_space: address_space.to_string(),
        })
    }

    /// The region containing `addr`.
    pub fn region(&self, addr: u64) -> Option<&Region> {
        let i = self.regions.partition_point(|r| r.start <= addr);
        let r = self.regions.get(i.checked_sub(1)?)?;
        (addr <= r.end).then_some(r)
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Whether `addr` is in an I/O region (a device's, not RAM or ROM).
    pub fn is_io(&self, addr: u64) -> bool {
        self.region(addr).is_some_and(|r| r.kind == "i/o")
    }

    /// The offset of `addr` into its region ([`Region::offset_of`]); None
    /// outside the map.
    pub fn offset(&self, addr: u64) -> Option<u64> {
        self.region(addr).map(|r| r.offset_of(addr))
    }
}

/// `0000000040028000-0000000040028fff (prio -1000, i/o): PWM`, or with the
/// offset into the region: `... (prio 0, i/o): nvic_sysregs @00000000000000f0`.
fn parse_region(line: &str) -> Option<Region> {
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let rest = rest.trim().strip_prefix('(')?;
    let (attrs, name) = rest.split_once("): ")?;
    let kind = attrs.rsplit(", ").next()?.trim().to_string();
    // The offset is QEMU's last ` @` and 16 hex digits (a region's own name
    // may hold ` @0x40010000`, as mps2's "CMSDK AHB peripheral region
    // @0x40010000 @0000000000004000" does); QEMU may follow it with more
    // (` [disabled]`).
    let offset_at = name.rsplit_once(" @").and_then(|(name, at)| {
        let hex = at.split_whitespace().next()?;
        let offset = (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())??;
        Some((name, offset))
    });
    let (name, offset) = offset_at.unwrap_or((name, 0));
    (start <= end).then_some(Region {
        start,
        end,
        kind,
        name: name.trim().to_string(),
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LM3S: &str = "\
FlatView #0
 AS \"memory\", root: system
 Root memory region: system
  0000000000000000-000000000003ffff (prio 0, rom): stellaris.flash
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
    fn picks_the_cpu_view_and_finds_the_most_specific_region() {
        let m = MemoryMap::parse(LM3S).unwrap();
        assert_eq!(m.address_space, "cpu-memory-0");
        assert_eq!(m.region(0xe000e010).unwrap().name, "v7m_systick");
        assert_eq!(m.region(0xe000e0ef).unwrap().name, "v7m_systick");
        assert_eq!(m.region(0xe000e0f0).unwrap().name, "nvic_sysregs");
        assert_eq!(m.region(0xe000e00f).unwrap().name, "nvic_sysregs");
        assert_eq!(m.region(0x20000000).unwrap().kind, "ram");
        assert_eq!(m.region(0x30000000), None);
    }

    #[test]
    fn offsets_into_regions_count_from_the_region_not_the_range() {
        let m = MemoryMap::parse(LM3S).unwrap();
        let at = |a: u64| m.region(a).unwrap().offset_of(a);
        assert_eq!(
            at(0xe000e010),
            0,
            "SysTick's CSR, the first register of v7m_systick"
        );
        assert_eq!(at(0xe000e018), 8, "SysTick's CVR");
        assert_eq!(at(0xe000e004), 4, "nvic_sysregs before SysTick");
        assert_eq!(
            at(0xe000ed00),
            0xd00,
            "nvic_sysregs after SysTick: CPUID, past the @offset"
        );
        assert_eq!(at(0x4000c000), 0, "the UART's data register");
        assert_eq!(m.offset(0x4000c018), Some(0x18), "the UART's flag register");
        assert_eq!(m.offset(0x30000000), None, "outside the map");
    }

    #[test]
    fn later_versions_of_the_map_are_appended_and_the_last_one_read() {
        let v2 = LM3S.replace(
            "(prio 0, i/o): pl011\n",
            "(prio 0, i/o): pl011\n  0000000050000000-0000000050000fff (prio 1, i/o): ahci\n",
        );
        let text = format!(
            "{LM3S}{}{v2}",
            version_line(2, "an I/O access at 0x50000010")
        );
        let all = versions(&text);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], ("", LM3S));
        assert_eq!(all[1].0, "2: an I/O access at 0x50000010");
        let m = MemoryMap::parse(&text).unwrap();
        assert!(m.is_io(0x50000010) && m.is_io(0x4000c000) && !m.is_io(0x20000000));
        assert_eq!(m.region(0x50000010).unwrap().name, "ahci");
        assert!(!MemoryMap::parse(LM3S).unwrap().is_io(0x50000010));
        assert_eq!(versions(LM3S), vec![("", LM3S)]);
    }

    #[test]
    fn a_region_name_may_hold_an_at_sign() {
        let m = MemoryMap::parse(
            "FlatView #0\n AS \"memory\", root: system\n  \
             0000000040010000-0000000040010fff (prio -1000, i/o): CMSDK AHB peripheral region @0x40010000 @0000000000004000\n  \
             0000000040020000-0000000040020fff (prio -1000, i/o): Extra peripheral region @0x40020000\n",
        )
        .unwrap();
        let r = m.region(0x40010010).unwrap();
        assert_eq!(
            (r.name.as_str(), r.offset),
            ("CMSDK AHB peripheral region @0x40010000", 0x4000)
        );
        let r = m.region(0x40020000).unwrap();
        assert_eq!(
            (r.name.as_str(), r.offset),
            ("Extra peripheral region @0x40020000", 0)
        );
    }

    #[test]
    fn the_format_doc_lists_the_short_names() {
        // The checkout being tested, from cargo at run time: a test binary
        // reused from another clone's build has another path compiled in.
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        let doc = std::fs::read_to_string(format!("{dir}/../docs/capture-format.md")).unwrap();
        // Rows `| `qemu` | `short` | boards |`.
        let listed: Vec<(String, String)> = doc
            .lines()
            .filter_map(|l| {
                let (q, rest) = l.strip_prefix("| `")?.split_once("` | `")?;
                Some((q.to_string(), rest.split('`').next()?.to_string()))
            })
            .collect();
        let declared: Vec<(String, String)> = SHORT_NAMES
            .iter()
            .map(|(q, s)| (q.to_string(), s.to_string()))
            .collect();
        for d in &declared {
            assert!(
                listed.contains(d),
                "docs/capture-format.md does not list {d:?}"
            );
        }
    }

    #[test]
    fn not_a_memory_map_is_an_error_that_says_so() {
        let e = MemoryMap::parse("  0000-0fff (prio 0, ram): x\n").unwrap_err();
        assert!(e.contains("is this `info mtree -f`?"), "{e}");
        let e = MemoryMap::parse("hello\n").unwrap_err();
        assert!(e.contains("no flat view"), "{e}");
    }
}
