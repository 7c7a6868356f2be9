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
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trace_schema::layout::{SegmentView, MAX_MEMORY_RANGES};

pub use trace_format::memory_map::{short_name, MemoryMap, Region, SHORT_NAMES};

use crate::qemu::qmp::{MtreeFetch, Qmp};
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
///
/// The map changes while the guest runs (PCI BARs, MMCONFIG). An I/O
/// access at an address that is not I/O in the map we have means it did;
/// one whose region the plugin API names otherwise may mean it did (a BAR
/// mapped into a PCI window the map shows whole). With a QMP socket, the
/// map is then read again (at most once per page of such addresses), and
/// if it changed, appended to mtree.txt as its next version
/// (`trace_format::memory_map::VERSION_MARK`); names come from the newest.
pub struct MapDeviceNames {
    fetch: Option<Arc<MtreeFetch>>,
    /// QEMU's QMP socket, to read the map again.
    qmp: Option<PathBuf>,
    mtree: PathBuf,
    user: DeviceMap,
    state: Mutex<Option<Versions>>,
}

/// Why the map is read again for an access.
enum Reread {
    /// Its address is not I/O in the map: a region was mapped since.
    NotCovered,
    /// The map has a region there (this one), but the plugin API names the
    /// access's region otherwise: maybe a window the guest has since mapped
    /// a device into (a PCI BAR in a PCI I/O or memory window), maybe only
    /// a name the plugin API gives an unnamed region (`anonXXXXXXXX`).
    Disagrees(String),
}

/// The map versions read so far.
struct Versions {
    /// The last version's names.
    current: Arc<DeviceResolver>,
    /// How many versions mtree.txt holds.
    count: usize,
    /// Pages of addresses a new version was read for already.
    reread_pages: HashSet<u64>,
    /// A read failed (QEMU gone, QMP refused): no more are tried.
    gave_up: bool,
}

impl MapDeviceNames {
    pub fn new(
        mtree: PathBuf,
        fetch: Option<Arc<MtreeFetch>>,
        qmp: Option<PathBuf>,
        user: DeviceMap,
    ) -> MapDeviceNames {
        MapDeviceNames {
            fetch,
            qmp,
            mtree,
            user,
            state: Mutex::new(None),
        }
    }

    /// The names `paddr` gets now: from the last version of the map, read
    /// again first if `paddr` is not I/O in it.
    /// `at`: the (vCPU, icount) of the access, when known (the drain's;
    /// a part being written has no single one).
    fn resolver_for(
        &self,
        paddr: u64,
        plugin_name: &str,
        at: Option<(u32, u64)>,
    ) -> Arc<DeviceResolver> {
        let mut state = self.state.lock().unwrap();
        let versions = state.get_or_insert_with(|| self.first_version());
        let why = match versions.current.map.as_ref().and_then(|m| m.region(paddr)) {
            _ if versions.current.map.is_none() => None,
            Some(r) if r.kind == "i/o" && r.name == plugin_name => None,
            Some(r) if r.kind == "i/o" => Some(Reread::Disagrees(r.name.clone())),
            _ => Some(Reread::NotCovered),
        };
        if let Some(why) = why {
            if self.qmp.is_some() && !versions.gave_up && versions.reread_pages.insert(paddr >> 12)
            {
                self.read_again(versions, paddr, plugin_name, at, why);
            }
        }
        versions.current.clone()
    }

    fn first_version(&self) -> Versions {
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
        Versions {
            current: Arc::new(DeviceResolver {
                map,
                user: self.user.clone(),
            }),
            count: 1,
            reread_pages: HashSet::new(),
            gave_up: false,
        }
    }

    /// Reads the map again over QMP because of an I/O access at `paddr`;
    /// appends it to mtree.txt and makes it current if it differs. A failure
    /// is a warning: names stay those of the version before.
    fn read_again(
        &self,
        versions: &mut Versions,
        paddr: u64,
        plugin_name: &str,
        at: Option<(u32, u64)>,
        why: Reread,
    ) {
        let Some(socket) = &self.qmp else { return };
        let read = Qmp::connect(socket, REREAD_CONNECT)
            .and_then(|mut qmp| qmp.human("info mtree -f"))
            .and_then(|text| {
                let map = MemoryMap::parse(&text).map_err(|e| anyhow::anyhow!(e))?;
                Ok((text, map))
            });
        let (text, map) = match read {
            Ok(r) => r,
            Err(e) => {
                // QEMU has probably exited (its last parts are written
                // after): no more tries. Only an access the map does not
                // cover at all loses something (its region).
                versions.gave_up = true;
                if let Reread::NotCovered = why {
                    eprintln!(
                        "trace-collector: warning: could not read QEMU's memory map again for \
                         an I/O access at {paddr:#x} it does not cover (MMIO rows there keep \
                         the plugin's device name and no region): {e:#}"
                    );
                }
                return;
            }
        };
        if versions.current.map.as_ref().map(MemoryMap::regions) == Some(map.regions()) {
            return;
        }
        let n = versions.count + 1;
        let because = match why {
            Reread::NotCovered => format!("that version {} did not cover", versions.count),
            Reread::Disagrees(region) => format!(
                "whose region the plugin API named {plugin_name}, version {} {region}",
                versions.count
            ),
        };
        let by = match at {
            Some((vcpu, icount)) => format!(" (vCPU {vcpu}, icount {icount})"),
            None => String::new(),
        };
        let why = format!(
            "read at {:.3} (seconds since the Unix epoch), for an I/O access at {paddr:#x}{by} \
             {because}",
            trace_format::Window::now(),
        );
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.mtree)
            .and_then(|mut f| {
                use std::io::Write;
                f.write_all(trace_format::memory_map::version_line(n, &why).as_bytes())?;
                f.write_all(text.as_bytes())
            });
        if let Err(e) = appended {
            eprintln!(
                "trace-collector: warning: cannot append QEMU's memory map to {}: {e}",
                self.mtree.display()
            );
        }
        versions.count = n;
        versions.current = Arc::new(DeviceResolver {
            map: Some(map),
            user: self.user.clone(),
        });
    }
}

/// How long a new read of the map waits to connect to QMP: QEMU listens
/// already, or has exited (then the read must not hold the writer up).
const REREAD_CONNECT: Duration = Duration::ZERO;

impl DeviceNames for MapDeviceNames {
    fn resolve<'a>(
        &'a self,
        paddr: u64,
        plugin_name: &'a str,
    ) -> (Cow<'a, str>, Option<Cow<'a, str>>) {
        let resolver = self.resolver_for(paddr, plugin_name, None);
        let r = resolver.resolve(paddr, plugin_name);
        (
            Cow::Owned(r.device.to_string()),
            r.region.map(|r| Cow::Owned(r.to_string())),
        )
    }

    fn noticed(&self, paddr: u64, plugin_name: &str, at: (u32, u64)) {
        self.resolver_for(paddr, plugin_name, Some(at));
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
