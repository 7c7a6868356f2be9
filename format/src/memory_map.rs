//! `mtree.txt`: QEMU's memory map (`info mtree -f`) as the collector saved
//! it, read back. The collector names each MMIO access's device from it;
//! readers take the offset of an access into its region from it
//! (`trace-query mmio-json --phys offset`).

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
    /// Parses `info mtree -f`, keeping the flat view of vCPU 0's address space
    /// (`cpu-memory-0`; the system `memory` view when there is none).
    pub fn parse(text: &str) -> Result<MemoryMap, String> {
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
    let (name, offset) = match name.split_once(" @") {
        Some((name, at)) => {
            // QEMU may follow the offset with more (` [disabled]`).
            let hex = at.split_whitespace().next().unwrap_or("");
            (name, u64::from_str_radix(hex, 16).ok()?)
        }
        None => (name, 0),
    };
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
    fn not_a_memory_map_is_an_error_that_says_so() {
        let e = MemoryMap::parse("  0000-0fff (prio 0, ram): x\n").unwrap_err();
        assert!(e.contains("is this `info mtree -f`?"), "{e}");
        let e = MemoryMap::parse("hello\n").unwrap_err();
        assert!(e.contains("no flat view"), "{e}");
    }
}
