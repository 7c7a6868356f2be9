//! Device names from QEMU's memory map.
//!
//! QEMU's plugin API names the region an I/O access hit, but not always
//! usefully: on lm3s6965evb QEMU 10.0.2 calls the SysTick region
//! `anon0x5581…` (an unnamed alias). QEMU's flat memory map (`info mtree -f`)
//! knows the most specific region at every address (`v7m_systick`), so each
//! MMIO access's device is resolved from it:
//!
//! 1. a user map (`--device-map FILE`) entry for the address range, else
//! 2. a user map entry for QEMU's region name, else
//! 3. the well-known short name of QEMU's region (trace-format's
//!    `SHORT_NAMES`), else
//! 4. QEMU's region name itself (without any `@offset`), else
//! 5. without a memory map, or for an address outside it: the plugin's name.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use trace_schema::layout::{SegmentView, MAX_MEMORY_RANGES};

pub use trace_format::memory_map::{short_name, MemoryMap, Region, SHORT_NAMES};

use crate::qemu::qmp::MtreeFetch;
use crate::write::tables::DeviceNames;

/// The RAM and ROM regions of `map`, `(first, last address, RAM?)`, the
/// largest `MAX_MEMORY_RANGES` (most boards have a few), by address.
pub fn memory_ranges(map: &MemoryMap) -> Vec<(u64, u64, bool)> {
    let mut ranges: Vec<(u64, u64, bool)> = map
        .regions()
        .iter()
        .filter(|r| r.kind == "ram" || r.kind == "rom")
        .map(|r| (r.start, r.end, r.kind == "ram"))
        .collect();
    ranges.sort_by_key(|&(first, last, _)| std::cmp::Reverse(last - first));
    ranges.truncate(MAX_MEMORY_RANGES);
    ranges.sort_by_key(|r| r.0);
    ranges
}

/// Publishes the RAM and ROM regions of `map` (the text of `info mtree -f`)
/// in the segment, for the shim of a core without an MMU
/// (`Header::publish_memory_ranges`). A map that does not parse publishes
/// nothing: the shim then asks QEMU about every access, as before.
pub fn publish_memory_ranges(view: &SegmentView, map: &str) {
    if let Ok(map) = MemoryMap::parse(map) {
        view.header().publish_memory_ranges(&memory_ranges(&map));
    }
}

/// The user's names: `--device-map FILE`. One entry per line:
/// `<QEMU region name> <name>` or `<start>-<end> <name>` (hex addresses,
/// inclusive, `0x` optional); `#` starts a comment.
#[derive(Clone, Debug, Default)]
pub struct DeviceMap {
    ranges: Vec<(u64, u64, String)>,
    regions: HashMap<String, String>,
}

impl DeviceMap {
    pub fn parse(text: &str) -> Result<DeviceMap, String> {
        let mut map = DeviceMap::default();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap().trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(key), Some(name), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!(
                    "line {}: {raw:?}: expected `<region name or start-end> <name>`",
                    n + 1
                ));
            };
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16);
            match key.split_once('-').map(|(a, b)| (hex(a), hex(b))) {
                Some((Ok(start), Ok(end))) if start <= end => {
                    map.ranges.push((start, end, name.to_string()))
                }
                Some((Ok(_), Ok(_))) => {
                    return Err(format!(
                        "line {}: {raw:?}: range start is after its end",
                        n + 1
                    ))
                }
                _ => {
                    map.regions.insert(key.to_string(), name.to_string());
                }
            }
        }
        Ok(map)
    }
}

/// Reads `--device-map FILE` (none: an empty map); errors name the file and line.
pub fn load_device_map(path: Option<&std::path::Path>) -> anyhow::Result<DeviceMap> {
    let Some(path) = path else {
        return Ok(DeviceMap::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the device map {}: {e}", path.display()))?;
    DeviceMap::parse(&text).map_err(|e| anyhow::anyhow!("device map {}: {e}", path.display()))
}

/// Resolves device names for MMIO accesses (see the module comment).
#[derive(Clone, Debug, Default)]
pub struct DeviceResolver {
    pub map: Option<MemoryMap>,
    pub user: DeviceMap,
}

/// What an MMIO access hit: names borrowed from the resolver (or the plugin's
/// name), since they are written once per MMIO row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The name users query by (`device` column).
    pub device: &'a str,
    /// QEMU's exact region name (`region` column), when the map was known.
    pub region: Option<&'a str>,
}

impl DeviceResolver {
    pub fn resolve<'a>(&'a self, paddr: u64, plugin_name: &'a str) -> Resolved<'a> {
        let region = self.map.as_ref().and_then(|m| m.region(paddr));
        let qemu_name = region.map(|r| r.name.as_str());
        let user_range = self
            .user
            .ranges
            .iter()
            .find(|(s, e, _)| (*s..=*e).contains(&paddr));
        let device = match (user_range, region) {
            (Some((_, _, name)), _) => name.as_str(),
            (None, None) => plugin_name,
            (None, Some(r)) => self
                .user
                .regions
                .get(&r.name)
                .map(String::as_str)
                .or_else(|| short_name(&r.name))
                .unwrap_or(&r.name),
        };
        Resolved {
            device,
            region: qemu_name,
        }
    }
}

/// The I/O regions of `map` whose device name (as the `device` column
/// gives it: the user's name, a well-known short name, else QEMU's) is
/// `name`, as (first, last) addresses; an error naming the devices there
/// are when none is.
pub fn device_ranges(
    map: &MemoryMap,
    user: &DeviceMap,
    name: &str,
) -> Result<Vec<(u64, u64)>, String> {
    let resolver = DeviceResolver {
        map: Some(map.clone()),
        user: user.clone(),
    };
    let mut devices: Vec<&str> = Vec::new();
    let mut ranges = Vec::new();
    for r in map.regions().iter().filter(|r| r.kind == "i/o") {
        let device = resolver.resolve(r.start, &r.name).device;
        if device == name {
            ranges.push((r.start, r.end));
        } else if !devices.contains(&device) {
            devices.push(device);
        }
    }
    if ranges.is_empty() {
        devices.sort_unstable();
        return Err(format!(
            "no device named '{name}' in QEMU's memory map (its devices: {})",
            devices.join(", ")
        ));
    }
    Ok(ranges)
}

/// How long naming waits for a memory map still being fetched.
const MAP_WAIT: Duration = Duration::from_secs(15);

/// The capture's `DeviceNames`: the memory map in `mtree` (fetched by
/// `fetch`, when there is one) and the user's map. Resolution happens when a
/// part is written, on the writer thread, so the first part waits for the
/// fetch instead of the drain.
pub struct MapDeviceNames {
    fetch: Option<Arc<MtreeFetch>>,
    mtree: PathBuf,
    user: DeviceMap,
    resolver: OnceLock<DeviceResolver>,
}

impl MapDeviceNames {
    pub fn new(mtree: PathBuf, fetch: Option<Arc<MtreeFetch>>, user: DeviceMap) -> MapDeviceNames {
        MapDeviceNames {
            fetch,
            mtree,
            user,
            resolver: OnceLock::new(),
        }
    }

    fn resolver(&self) -> &DeviceResolver {
        self.resolver.get_or_init(|| {
            if let Some(f) = &self.fetch {
                f.wait_done(MAP_WAIT);
            }
            let map = match std::fs::read_to_string(&self.mtree) {
                Ok(text) => match MemoryMap::parse(&text) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        eprintln!(
                            "trace-collector: warning: {}: {e}; MMIO devices keep the plugin's names",
                            self.mtree.display()
                        );
                        None
                    }
                },
                Err(_) => None,
            };
            DeviceResolver { map, user: self.user.clone() }
        })
    }
}

impl DeviceNames for MapDeviceNames {
    fn resolve<'a>(
        &'a self,
        paddr: u64,
        plugin_name: &'a str,
    ) -> (Cow<'a, str>, Option<Cow<'a, str>>) {
        let r = self.resolver().resolve(paddr, plugin_name);
        (Cow::Borrowed(r.device), r.region.map(Cow::Borrowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ranges_by_the_names_users_query() {
        let map = MemoryMap::parse(LM3S).unwrap();
        let user = DeviceMap::default();
        assert_eq!(
            device_ranges(&map, &user, "pl011"),
            Ok(vec![(0x4000c000, 0x4000cfff)])
        );
        let e = device_ranges(&map, &user, "uart").unwrap_err();
        assert!(
            e.contains("no device named 'uart'")
                && e.contains("PWM, flash-control, nvic, pl011, systick"),
            "{e}"
        );
    }

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
  0000000040028000-0000000040028fff (prio -1000, i/o): PWM
  00000000400fd000-00000000400fdfff (prio -1000, i/o): flash-control
  00000000e000e000-00000000e000e00f (prio 0, i/o): nvic_sysregs
  00000000e000e010-00000000e000e0ef (prio 1, i/o): v7m_systick
  00000000e000e0f0-00000000e000efff (prio 0, i/o): nvic_sysregs @00000000000000f0
";

    #[test]
    fn memory_ranges_are_the_ram_and_rom_regions_by_address() {
        let m = MemoryMap::parse(LM3S).unwrap();
        assert_eq!(
            memory_ranges(&m),
            m.regions()
                .iter()
                .filter(|r| r.kind == "ram" || r.kind == "rom")
                .map(|r| (r.start, r.end, r.kind == "ram"))
                .collect::<Vec<_>>(),
            "the RAM and ROM regions, by address"
        );
        assert!(memory_ranges(&m).contains(&(0x2000_0000, 0x2000_ffff, true)));
    }

    #[test]
    fn resolves_short_names_user_names_and_falls_back_to_the_plugin() {
        let r = DeviceResolver {
            map: Some(MemoryMap::parse(LM3S).unwrap()),
            user: DeviceMap::default(),
        };
        assert_eq!(
            r.resolve(0xe000e018, "anon0x1234"),
            Resolved {
                device: "systick",
                region: Some("v7m_systick")
            }
        );
        assert_eq!(
            r.resolve(0x400fd000, "flash-control").device,
            "flash-control"
        );
        assert_eq!(r.resolve(0x40028000, "PWM").device, "PWM");
        assert_eq!(
            r.resolve(0xf0000000, "anon0x99"),
            Resolved {
                device: "anon0x99",
                region: None
            }
        );

        let user =
            DeviceMap::parse("# uarts\n0x4000c000-0x4000cfff uart0\nv7m_systick tick\n").unwrap();
        let r = DeviceResolver { user, ..r };
        assert_eq!(r.resolve(0x4000c000, "pl011").device, "uart0");
        assert_eq!(r.resolve(0x4000c000, "pl011").region, Some("pl011"));
        assert_eq!(r.resolve(0xe000e010, "anon").device, "tick");
    }

    #[test]
    fn bad_inputs_name_the_line() {
        assert!(MemoryMap::parse("  0000-0fff (prio 0, i/o): x\n")
            .unwrap_err()
            .contains("line 1"));
        assert!(MemoryMap::parse("hello\n").is_err());
        assert!(DeviceMap::parse("a b c\n").unwrap_err().contains("line 1"));
        assert!(DeviceMap::parse("\n0x20-0x10 x\n")
            .unwrap_err()
            .contains("line 2"));
    }
}
