//! trace shim: a QEMU TCG plugin that writes every traced event, as a
//! fixed-size Cap'n Proto record gathered in chunks, into the shared-memory
//! ring of the vCPU that made it. The collector (`trace-collector`) drains
//! the rings in another process; nothing here formats, allocates, locks or
//! makes a syscall per event.
//!
//! Loaded as `qemu-system-ARCH ... -plugin libtrace_shim.so,events=mem+mmio,wait=on`.
//! Options: see `trace_schema::options`.
//!
//! Read in order: install → translate (per translated block) → the two hot
//! callbacks (memory access, block execution) → exit.

mod access_kind;
mod asid;
mod disas;
mod segment;
mod vcpu;

use qemu_plugin_sys::*;
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8};
use trace_schema::attach::{self, State};
use trace_schema::chunk::{self, MemAccess};
use trace_schema::events_capnp::meta;
use trace_schema::layout::{Geometry, Header};
use trace_schema::options::{Disas, EventSet, Idle, Overflow, ShimOptions};
use trace_schema::sync::Ordering;

use asid::{AsidSlot, Staleness};

/// `Shim::asid_staleness`, ordered so that the most cautious vCPU wins.
const ASID_NONE: u8 = 0;
const ASID_ON_WRITES: u8 = 1;
const ASID_EVERY_BLOCK: u8 = 2;
use segment::Segment;
use vcpu::VcpuSlot;

#[no_mangle]
pub static qemu_plugin_version: c_int = QEMU_PLUGIN_VERSION as c_int;

/// Everything the callbacks need, built once at install and never freed
/// (QEMU may call us until the process ends).
struct Shim {
    options: ShimOptions,
    segment: Segment,
    vcpus: Box<[VcpuSlot]>,
    /// Per-vCPU address-space ids (see `asid`).
    asids: Box<[AsidSlot]>,
    /// When the vCPUs' context register values go stale (`asid::Staleness`
    /// as `ASID_*`): `ASID_NONE` when the core has none.
    asid_staleness: AtomicU8,
    /// Per-vCPU count of instructions started, as of the end of the block
    /// being run: see `Score` for how it is kept and read.
    icount: qemu_plugin_u64,
    /// Per-vCPU count of the running block's instructions after the one
    /// started last (see `Score`).
    left: qemu_plugin_u64,
    /// Per-vCPU flag: set to 1 by `watch_for_attach` when what QEMU's code
    /// is instrumented for must change; every block tests it.
    wake: qemu_plugin_u64,
    /// Per-vCPU flag, set to 1 inline by QEMU's generated code where the
    /// context register may change (see `on_translate`), and when the vCPU
    /// resumes: the ASID in `asids` may be stale (see `asid_of`).
    asid_stale: qemu_plugin_u64,
    /// Where the scoreboard's entries are, as of the last block translated:
    /// see `Shim::score`.
    score_base: AtomicPtr<Score>,
    next_block_id: AtomicU64,
    /// Disassembles the instructions of translated blocks (`events=insn`).
    disassembler: disas::Disassembler,
    /// Our plugin id, for `qemu_plugin_reset`.
    id: qemu_plugin_id_t,
    /// An Arm target (`qemu-system-arm`): with no MMU context register
    /// (Cortex-M and -R), its cores have no MMU and its boards map their
    /// memory once, at creation (see `fixed_map`).
    arm: bool,
    /// The attach (`Header::attach_count`) whose collector has been sent the
    /// description of every block it can see executed. Block descriptions
    /// are sent once, at translation; the first collector also gets those of
    /// blocks translated before it attached (they wait in the meta ring), but
    /// a later one does not, so a new attach makes QEMU translate everything
    /// again (see `describe_blocks_again`).
    described_for_attach: AtomicU32,
    /// The events QEMU's translated code is instrumented for
    /// (`EventSet::bits`), set when we ask QEMU for a reset that makes it
    /// so: 0 while no collector is attached with `idle=free` (see
    /// `reinstrument`).
    instrumented: AtomicU32,
    /// A reset we asked for is under way.
    resetting: AtomicBool,
    /// The address whose instruction stops the recording (`attach
    /// --until-pc`) in the translations of `instrumented`, `NO_STOP` if none.
    instrumented_stop: AtomicU64,
    /// The address whose instruction starts it (`attach --from-pc`),
    /// likewise.
    instrumented_start: AtomicU64,
    /// `idle=lazy`, or `idle=auto` on a core with an MMU (decided at the
    /// first vCPU's init): see `options::Idle`.
    lazy: AtomicBool,
}

// Safety: after install it changes only through atomics and the per-vCPU
// slots (Sync for their own reasons); the scoreboard pointers in `icount`,
// `left` and `asid_stale` are QEMU's handles, only passed back to QEMU.
unsafe impl Sync for Shim {}
// Safety: its raw pointers (segment, scoreboard) are process-wide, not tied to
// the thread that built it.
unsafe impl Send for Shim {}

/// Set once in `qemu_plugin_install`, before any callback is registered.
static SHIM: AtomicPtr<Shim> = AtomicPtr::new(std::ptr::null_mut());

#[inline(always)]
fn shim() -> &'static Shim {
    // Relaxed: the pointer is stored before QEMU learns of our callbacks, and
    // QEMU's own synchronisation orders that before any callback runs.
    // Safety: `SHIM` holds the never-freed `Shim` of `qemu_plugin_install`,
    // stored before install's own calls of this and before any callback exists.
    unsafe { &*SHIM.load(Ordering::Relaxed) }
}

impl Shim {
    #[inline(always)]
    fn header(&self) -> &Header {
        self.segment.view.header()
    }

    #[inline(always)]
    fn slot(&self, vcpu: c_uint) -> &VcpuSlot {
        &self.vcpus[vcpu as usize]
    }
}

thread_local! {
    /// The vCPU this thread last ran (set by the vCPU-init callback, which QEMU
    /// runs on the vCPU's thread): translation-time meta goes to its meta ring.
    static THREAD_VCPU: Cell<u32> = const { Cell::new(0) };
    /// Whether a vCPU was initialised on this thread.
    static THREAD_HAS_VCPU: Cell<bool> = const { Cell::new(false) };
}

// ---------------------------------------------------------------- install

/// QEMU's entry point into the plugin.
///
/// # Safety
/// QEMU's contract: `info` points to a valid `qemu_info_t`, and `argv` to
/// `argc` NUL-terminated strings, for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn qemu_plugin_install(
    id: qemu_plugin_id_t,
    info: *const qemu_info_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    // Safety: QEMU's contract (above): `argv` holds `argc` C strings.
    let args = unsafe { trace_schema::options::plugin_args(argc, argv as *const *const c_char) };
    // Safety: this is `qemu_plugin_install`, with QEMU's `id` and an `info`
    // valid for the call (QEMU's contract).
    match unsafe { install(id, &*info, &args) } {
        Ok(()) => 0,
        Err(message) => {
            // QEMU only says that the plugin failed to install: say why.
            eprintln!("trace shim: {message}");
            -1
        }
    }
}

/// # Safety
/// Only from `qemu_plugin_install`, once, with the `id` and `info` QEMU
/// passed it.
unsafe fn install(id: qemu_plugin_id_t, info: &qemu_info_t, args: &[String]) -> Result<(), String> {
    let options = ShimOptions::parse(args).map_err(|e| e.to_string())?;
    if !info.system_emulation {
        return Err("only system emulation (qemu-system-*) is supported".into());
    }
    // Safety: QEMU fills the union's `system` when `system_emulation` is set
    // (checked above).
    let n_vcpus = unsafe { info.__bindgen_anon_1.system.max_vcpus }.max(1) as u32;
    let geometry = Geometry {
        n_vcpus,
        event_ring_bytes: options.ring_bytes,
        meta_ring_bytes: options.meta_ring_bytes,
    };
    let segment = Segment::create(geometry, &args.join(","))?;
    let vcpus = (0..n_vcpus)
        .map(|v| VcpuSlot::new(&segment.view, v))
        .collect();
    // One scoreboard entry per vCPU: a `Score`.
    // Safety: no precondition: QEMU makes entries of the size asked, which we
    // treat as `Score`s.
    let score = unsafe { qemu_plugin_scoreboard_new(std::mem::size_of::<Score>()) };
    // Safety: `target_name` is a C string QEMU keeps for its life.
    let target = unsafe { CStr::from_ptr(info.target_name) }.to_string_lossy();
    let disassembler = disas::Disassembler::new(&target, options.disas == Disas::Qemu);
    let options_idle = options.idle;
    let built = Box::new(Shim {
        options,
        segment,
        vcpus,
        asids: (0..n_vcpus).map(|_| AsidSlot::new()).collect(),
        asid_staleness: AtomicU8::new(ASID_NONE),
        icount: qemu_plugin_u64 {
            score,
            offset: std::mem::offset_of!(Score, icount),
        },
        asid_stale: qemu_plugin_u64 {
            score,
            offset: std::mem::offset_of!(Score, asid_stale),
        },
        left: qemu_plugin_u64 {
            score,
            offset: std::mem::offset_of!(Score, left),
        },
        wake: qemu_plugin_u64 {
            score,
            offset: std::mem::offset_of!(Score, wake),
        },
        // Set at the first translation: QEMU finds no entry before a vCPU's
        // init, and only translated blocks' callbacks use it.
        score_base: AtomicPtr::new(std::ptr::null_mut()),
        next_block_id: AtomicU64::new(0),
        disassembler,
        id,
        described_for_attach: AtomicU32::new(1),
        arm: target == "arm",
        instrumented: AtomicU32::new(0),
        resetting: AtomicBool::new(false),
        instrumented_stop: AtomicU64::new(NO_STOP),
        instrumented_start: AtomicU64::new(NO_STOP),
        lazy: AtomicBool::new(matches!(options_idle, Idle::Lazy | Idle::Auto)),
    });
    SHIM.store(Box::into_raw(built), Ordering::Release);

    if shim().options.wait {
        wait_for_collector(shim().header(), &shim().segment);
    }
    // What the first translations instrument for; later changes come from
    // `watch_for_attach`.
    let wanted = shim().wanted_instrumentation();
    shim().set_instrumentation(wanted);
    shim()
        .header()
        .instrumented_events
        .store(wanted.0, Ordering::Release);
    std::thread::Builder::new()
        .name("trace-shim watch".into())
        .spawn(|| watch_for_attach(shim()))
        .map_err(|e| format!("cannot start the shim's watcher thread: {e}"))?;
    // Safety: `id` is QEMU's for this install, and `SHIM` is set above, so
    // the callbacks find the `Shim`.
    unsafe {
        qemu_plugin_register_vcpu_init_cb(id, Some(on_vcpu_init));
        register_callbacks(id);
    }
    Ok(())
}

/// Our callbacks but vCPU init: registered at install, and again after a
/// `qemu_plugin_reset` (every vCPU is initialised by then).
///
/// # Safety
/// `id` must be this plugin's, and `SHIM` set (the callbacks use `shim()`).
unsafe fn register_callbacks(id: qemu_plugin_id_t) {
    let shim = shim();
    // `idle=lazy`, uninstrumented: not even a translation callback (QEMU's
    // plugin code at every translation costs a translating guest a few per
    // cent); the watcher registers it when a collector attaches.
    let lazy = shim.lazy() && shim.instrumented.load(Ordering::Relaxed) == 0;
    // Safety: `id` and `SHIM` as required above; each callback has the type its
    // registration takes, and `on_exit` ignores its null `udata`.
    unsafe {
        if !lazy {
            qemu_plugin_register_vcpu_tb_trans_cb(id, Some(on_translate));
        }
        qemu_plugin_register_vcpu_resume_cb(id, Some(on_vcpu_resume));
        qemu_plugin_register_vcpu_idle_cb(id, Some(on_vcpu_idle));
        qemu_plugin_register_atexit_cb(id, Some(on_exit), std::ptr::null_mut());
    }
}

/// A collector attached after another one: flush QEMU's translations so that
/// every block is translated, and so described, again. `qemu_plugin_reset`
/// drops all our callbacks and the translated code; `on_reset` registers
/// ours again. Blocks that run until the flush completes are ones the new
/// collector cannot describe (it counts them as unknown).
#[cold]
fn describe_blocks_again(shim: &Shim, attach: u32) {
    let described = shim.described_for_attach.load(Ordering::Relaxed);
    if attach > described
        && shim
            .described_for_attach
            .compare_exchange(described, attach, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        shim.resetting.store(true, Ordering::Relaxed);
        // Safety: `shim.id` is ours; QEMU allows a reset from a callback, and
        // `on_reset` registers our callbacks again once it is done.
        unsafe { qemu_plugin_reset(shim.id, Some(on_reset)) };
    }
}

/// QEMU has thrown away every translated block and our callbacks (a reset
/// `describe_blocks_again` or `reinstrument` asked for): from now on blocks
/// are translated, so instrumented, anew.
///
/// QEMU runs this with every vCPU stopped between blocks (its exclusive
/// section), so the vCPUs' scoreboard entries may be touched here: a block
/// that stopped early leaves its unrun instructions in `left`, which its
/// vCPU's next block would take off, but that block may be one without our
/// callbacks, so they are taken off now (`icount` stays exact across the
/// change); and the context register may have changed while nothing
/// watched it.
///
/// # Safety
/// Only called by QEMU, when a reset we asked for is done.
unsafe extern "C" fn on_reset(id: qemu_plugin_id_t) {
    let shim = shim();
    for slot in shim.vcpus.iter().filter(|s| s.ran()) {
        // Safety: an initialised vCPU's entry; every vCPU is stopped (above).
        unsafe {
            let score = shim.score_looked_up(slot.index());
            (*score).take_off_unrun();
            (*score).asid_stale = 1;
        }
    }
    let events = shim.events();
    if events.insn {
        // Every block is described again as it is translated again.
        let attach = shim.header().attach_count.load(Ordering::Relaxed);
        shim.described_for_attach.store(attach, Ordering::Relaxed);
    }
    // Release: what a collector reads after it saw the new value (nothing
    // yet; informational) is ordered.
    shim.header()
        .instrumented_events
        .store(events.bits(), Ordering::Release);
    shim.resetting.store(false, Ordering::Relaxed);
    // Safety: QEMU passes our own id, and `SHIM` was set at install.
    unsafe { register_callbacks(id) };
}

// ------------------------------------------------ attached and detached

/// `Shim::instrumented_stop` (and `instrumented_start`) when there is no
/// such address.
const NO_STOP: u64 = u64::MAX;

/// The instruction at the collector's start address (`attach --from-pc`)
/// is about to run: start the recording (with this instruction's
/// accesses; other vCPUs from their next event). It stays instrumented
/// while the window lasts, so that it costs no second reset: then the state
/// is not `Armed` and this returns.
///
/// # Safety
/// Only called by QEMU, as the instruction callback `on_translate`
/// registers, on vCPU `vcpu`'s thread.
unsafe extern "C" fn on_start_pc(_vcpu: c_uint, _udata: *mut c_void) {
    let header = shim().header();
    if attach::armed(header) {
        attach::start_at_trigger(header);
    }
}

/// The instruction at the collector's stop address (`attach --until-pc`)
/// is about to run: stop the recording (its accesses and everything after
/// are not in the capture) and publish what this vCPU gathered.
///
/// # Safety
/// Only called by QEMU, as the instruction callback `on_translate`
/// registers, on vCPU `vcpu`'s thread.
unsafe extern "C" fn on_stop_pc(vcpu: c_uint, _udata: *mut c_void) {
    let shim = shim();
    attach::stop_at_trigger(shim.header());
    shim.slot(vcpu).flush(shim.header(), shim.overflow());
}

/// How often `watch_for_attach` looks at the segment's state.
const WATCH_PERIOD: std::time::Duration = std::time::Duration::from_millis(10);
/// Every how many periods it checks that the collector is alive (a
/// syscall and a read of /proc: every 100 ms).
const LIVENESS_PERIODS: u64 = 10;

/// A collector that is attached (or waits for its start trigger) and died
/// (killed): detach it. A vCPU waiting on a full ring finds that out
/// itself; this finds it when no ring is full, so that QEMU does not stay
/// instrumented for a dead collector (see `Shim::wanted`).
fn check_collector_alive(header: &Header) {
    if matches!(State::of(header), Ok(State::Attached | State::Armed))
        && !attach::collector_alive(header)
    {
        attach::give_up_on_dead_collector(header);
    }
}

/// The shim's own thread: when what QEMU's code should be instrumented for
/// changes (a collector attached or detached, see `Shim::wanted`), it
/// raises every vCPU's `wake` flag, which their next block tests (a
/// conditional callback: the only cost of a shim nobody is attached to).
/// A reset must be asked for from a vCPU (`reinstrument`, in `on_wake`):
/// QEMU throws translated code away only from a vCPU's safe point.
///
/// Uninstrumented, a vCPU has no callback that answers a collector's flush
/// request: the watcher wakes it for that too (a detaching collector asks
/// for one after it stopped the recording).
fn watch_for_attach(shim: &'static Shim) {
    for period in 0u64.. {
        std::thread::sleep(WATCH_PERIOD);
        if period.is_multiple_of(LIVENESS_PERIODS) {
            check_collector_alive(shim.header());
        }
        let current = shim.instrumentation();
        let instrumented = current.0;
        let change = shim.wanted_instrumentation() != current;
        if change && instrumented == 0 && shim.lazy() {
            // No code of ours runs: have QEMU call us at its next
            // translation (QEMU takes registrations from any thread; again
            // and again only replaces the function with itself).
            // Safety: our id; `on_translate` has the callback's type.
            unsafe { qemu_plugin_register_vcpu_tb_trans_cb(shim.id, Some(on_translate)) };
        } else if change
            || (instrumented == 0
                && shim
                    .vcpus
                    .iter()
                    .any(|s| s.ran() && !s.answered(shim.header())))
        {
            shim.wake_vcpus();
        }
    }
}

/// A block starts while the vCPU's `wake` flag is up: publish what it
/// gathered (the collector stopped the recording, or asked for a flush),
/// and ask QEMU to instrument anew if what is wanted changed.
///
/// # Safety
/// Only called by QEMU, as the conditional callback `on_translate`
/// registers, on vCPU `vcpu`'s thread.
unsafe extern "C" fn on_wake(vcpu: c_uint, _udata: *mut c_void) {
    let shim = shim();
    // Safety: a translated block's callback (`Shim::score`); the watcher
    // only ever stores 1 (atomically, `wake_vcpus`).
    unsafe { AtomicU64::from_ptr(&raw mut (*shim.score(vcpu)).wake) }.store(0, Ordering::Relaxed);
    shim.slot(vcpu).flush(shim.header(), shim.overflow());
    shim.reinstrument();
}

impl Shim {
    /// What a full ring does: what the attached collector asked for
    /// (`attach --overflow`), else our `overflow` option.
    #[inline(always)]
    fn overflow(&self) -> Overflow {
        attach::requested_overflow(self.header()).unwrap_or(self.options.overflow)
    }

    /// Whether the shim is lazy while detached (the field's comment).
    #[inline(always)]
    fn lazy(&self) -> bool {
        self.lazy.load(Ordering::Relaxed)
    }

    /// The events QEMU's code is instrumented for now.
    #[inline(always)]
    fn events(&self) -> EventSet {
        EventSet::from_bits(self.instrumented.load(Ordering::Relaxed))
    }

    /// What QEMU's code should be instrumented for: what the collector asked
    /// for (`Header::requested_events`, else our `events` option) while one
    /// is attached; while none is, nothing (`idle=free`, `lazy`) or the same
    /// (`idle=count`, which keeps `icount` exact). A collector that died
    /// (`Detached`) is none: QEMU runs free, and the events lost from then
    /// on are not counted (`reinstrument` says so to the next collector),
    /// unless `idle=count`, which counts them exactly.
    fn wanted(&self) -> EventSet {
        let header = self.header();
        let collector = matches!(State::of(header), Ok(State::Attached | State::Armed));
        if !collector && self.options.idle != Idle::Count {
            return EventSet::default();
        }
        attach::requested_events(header).unwrap_or(self.options.events)
    }

    /// The address the attached collector wants the recording stopped at
    /// (`Header::stop_at_pc`), `NO_STOP` if none.
    fn wanted_stop(&self) -> u64 {
        let header = self.header();
        match State::of(header) {
            Ok(State::Attached | State::Armed) => {
                attach::requested_stop_pc(header).unwrap_or(NO_STOP)
            }
            _ => NO_STOP,
        }
    }

    /// The address the attached collector wants the recording started at
    /// (`Header::start_at_pc`), `NO_STOP` if none; kept once it started
    /// (`on_start_pc`).
    fn wanted_start(&self) -> u64 {
        let header = self.header();
        match State::of(header) {
            Ok(State::Attached | State::Armed) => {
                attach::requested_start_pc(header).unwrap_or(NO_STOP)
            }
            _ => NO_STOP,
        }
    }

    /// Asks QEMU to throw away its translated code, so that every block is
    /// translated again for what is wanted now (`on_reset` completes it).
    /// From a vCPU only (see `watch_for_attach`).
    fn reinstrument(&self) {
        let wanted = self.wanted_instrumentation();
        if wanted == self.instrumentation() || self.resetting.swap(true, Ordering::Relaxed) {
            return; // nothing to change, or a reset under way (the watcher comes back)
        }
        if wanted.0 == 0 && State::of(self.header()) == Ok(State::Detached) {
            // Its collector died: what QEMU does from now on is not counted.
            attach::stop_counting_losses(self.header());
        }
        self.set_instrumentation(wanted);
        // Safety: `self.id` is ours; QEMU allows a reset from a callback, and
        // `on_reset` registers our callbacks again once it is done.
        unsafe { qemu_plugin_reset(self.id, Some(on_reset)) };
    }

    /// What QEMU's code should be instrumented for: (`EventSet::bits`, stop
    /// address, start address).
    fn wanted_instrumentation(&self) -> (u32, u64, u64) {
        (
            self.wanted().bits(),
            self.wanted_stop(),
            self.wanted_start(),
        )
    }

    /// What the translations since the last reset are instrumented for.
    fn instrumentation(&self) -> (u32, u64, u64) {
        (
            self.instrumented.load(Ordering::Relaxed),
            self.instrumented_stop.load(Ordering::Relaxed),
            self.instrumented_start.load(Ordering::Relaxed),
        )
    }

    fn set_instrumentation(&self, (events, stop, start): (u32, u64, u64)) {
        self.instrumented.store(events, Ordering::Relaxed);
        self.instrumented_stop.store(stop, Ordering::Relaxed);
        self.instrumented_start.store(start, Ordering::Relaxed);
    }

    /// Raises every vCPU's `wake` flag (see `watch_for_attach`).
    fn wake_vcpus(&self) {
        // QEMU moves the scoreboard when a vCPU beyond its first 16 is
        // initialised (`Shim::score`): only then may an entry's address go
        // stale. With more vCPUs, wait until all are initialised.
        let ran = self.vcpus.iter().filter(|s| s.ran()).count();
        if ran == 0 || (self.vcpus.len() > 16 && ran < self.vcpus.len()) {
            return;
        }
        for slot in self.vcpus.iter().filter(|s| s.ran()) {
            // Safety: an initialised vCPU's entry, which stays where it is
            // (above); its vCPU's code reads the flag, `on_wake` clears it,
            // both atomically enough for a u64 flag QEMU's code tests.
            unsafe {
                let score = self.score_looked_up(slot.index());
                AtomicU64::from_ptr(&raw mut (*score).wake).store(1, Ordering::Relaxed);
            }
        }
    }
}

/// `wait=on`: hold QEMU until a collector is attached, so that an attached
/// capture starts at the first instruction. This runs inside
/// `qemu_plugin_install`, on QEMU's main thread before the machine exists:
/// no vCPU is stuck in a callback, so SIGINT/SIGTERM still end QEMU (waiting
/// in a vCPU callback instead would keep QEMU from ever shutting down).
fn wait_for_collector(header: &Header, segment: &Segment) {
    let _cleanup = segment.unlink_on_fatal_signals();
    while State::of(header) == Ok(State::Waiting) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// # Safety
/// Only called by QEMU, as the vCPU-init callback, which it runs on vCPU
/// `vcpu`'s thread.
unsafe extern "C" fn on_vcpu_init(_id: qemu_plugin_id_t, vcpu: c_uint) {
    let earlier = THREAD_VCPU.with(|v| v.replace(vcpu));
    if THREAD_HAS_VCPU.with(|h| h.replace(true)) && earlier != vcpu {
        refuse_one_thread_for_many_vcpus(earlier, vcpu);
    }
    let shim = shim();
    if let Some(slot) = shim.vcpus.get(vcpu as usize) {
        slot.woke();
    }
    if let Some(slot) = shim.asids.get(vcpu as usize) {
        // Safety: on the vCPU's own thread, in its init callback, as `init`
        // needs (QEMU's register list is `current_cpu`'s).
        let mode = match unsafe { slot.init() } {
            None => ASID_NONE,
            Some(Staleness::OnWrites) => ASID_ON_WRITES,
            Some(Staleness::EveryBlock) => ASID_EVERY_BLOCK,
        };
        // Relaxed: every vCPU is initialised before any block is translated.
        shim.asid_staleness.fetch_max(mode, Ordering::Relaxed);
        if shim.options.idle == Idle::Auto && shim.fixed_map() && shim.lazy() {
            // A core without an MMU: firmware, whose busy loop may never
            // translate or idle: `free`, whose per-block test needs the
            // translation callback.
            shim.lazy.store(false, Ordering::Relaxed);
            // Safety: our id; a vCPU callback may register others.
            unsafe { qemu_plugin_register_vcpu_tb_trans_cb(shim.id, Some(on_translate)) };
        }
        // Nothing read yet.
        // Safety: QEMU grows the scoreboard for a vCPU before its init
        // callbacks, and only this vCPU's thread touches its entry.
        unsafe { (*shim.score_looked_up(vcpu)).asid_stale = 1 };
    }
}

/// Two vCPUs initialised on one thread: QEMU runs its vCPUs in turn on one
/// thread (`-accel tcg,thread=single`, or `-icount`). There, QEMU 10.0
/// generates each block's plugin code with the index of the vCPU that
/// translated it as a constant (accel/tcg/plugin-gen.c, `gen_cpu_index`)
/// and shares the block with the other vCPUs: their events would be
/// recorded as that vCPU's, and the scoreboard's inline ops write over the
/// constant, which corrupts the block (QEMU aborts in `arm_mmu_idx_el`;
/// QEMU's own tests/tcg/plugins/bb.c with `inline=true` does the same). So
/// QEMU stops here, before the guest runs, saying why.
#[cold]
fn refuse_one_thread_for_many_vcpus(earlier: c_uint, vcpu: c_uint) -> ! {
    eprintln!(
        "trace-shim: vCPUs {earlier} and {vcpu} run on one thread (-accel tcg,thread=single or \
         -icount with -smp > 1): QEMU 10.0's plugin code then gives every vCPU's events to the \
         vCPU that translated the block and corrupts its generated code. Run with -smp 1, or \
         without -icount and thread=single (multi-threaded TCG)."
    );
    shim().segment.unlink();
    std::process::exit(1);
}

/// The vCPU leaves idle (also after a reset, which sets its context register
/// again): the ASID read before may be stale.
///
/// # Safety
/// Only called by QEMU, as the vCPU-resume callback, on vCPU `vcpu`'s thread.
unsafe extern "C" fn on_vcpu_resume(_id: qemu_plugin_id_t, vcpu: c_uint) {
    let shim = shim();
    if let Some(slot) = shim.vcpus.get(vcpu as usize) {
        slot.resumed();
    }
    if (vcpu as usize) < shim.asids.len() {
        // Safety: a resumed vCPU was initialised (it has an entry), and this is
        // its thread, the only one that touches the entry.
        unsafe { (*shim.score_looked_up(vcpu)).asid_stale = 1 };
    }
}

/// The vCPU goes idle (a halted guest CPU): publish what it gathered, so
/// the collector has it while the vCPU makes no events.
///
/// # Safety
/// Only called by QEMU, as the vCPU-idle callback, on vCPU `vcpu`'s thread
/// (where its chunks may be published).
unsafe extern "C" fn on_vcpu_idle(_id: qemu_plugin_id_t, vcpu: c_uint) {
    let shim = shim();
    if let Some(slot) = shim.vcpus.get(vcpu as usize) {
        slot.flush(shim.header(), shim.overflow());
        slot.went_idle();
    }
    // A vCPU context with nothing in flight: where `idle=lazy` notices an
    // attach in a guest that translates nothing new.
    shim.reinstrument();
}

// -------------------------------------------------------------- translate

/// Called once per translated block, before it first runs: decide what each
/// instruction reports. Not the hot path: allocation and locks are fine here.
///
/// # Safety
/// Only called by QEMU, as the translation callback: `tb` is the block being
/// translated, valid until it returns.
unsafe extern "C" fn on_translate(_id: qemu_plugin_id_t, tb: *mut qemu_plugin_tb) {
    let shim = shim();
    shim.find_score_base();
    let header = shim.header();
    if shim.lazy() && shim.instrumented.load(Ordering::Relaxed) == 0 {
        // `idle=lazy`, uninstrumented: nothing in the block; a translation
        // is when we notice an attach.
        return shim.reinstrument();
    }
    // Every block tests its vCPU's `wake` flag first (see `reinstrument`).
    // Safety: `tb` is being translated; `wake` is a u64 inside our
    // scoreboard's entries, and the callback ignores its null `udata`.
    unsafe {
        qemu_plugin_register_vcpu_tb_exec_cond_cb(
            tb,
            Some(on_wake),
            qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
            qemu_plugin_cond::QEMU_PLUGIN_COND_NE,
            shim.wake,
            0,
            std::ptr::null_mut(),
        );
    }
    let events = shim.events();
    if events.is_empty() {
        return; // no collector (`idle=free`): nothing else
    }
    // Safety: `tb` is valid during this callback (QEMU's contract).
    let n = unsafe { qemu_plugin_tb_n_insns(tb) };
    // With an MMU core, a memory callback reads the context register at the
    // first event it emits after the value read before went stale: that needs
    // R_REGS, and the code that makes it stale (an instruction that writes
    // the register, or any block) marks it so before it runs.
    let asid = if events.wants_memory() {
        shim.asid_staleness.load(Ordering::Relaxed)
    } else {
        ASID_NONE
    };
    let memory_callback = if shim.fixed_map() {
        on_memory_access_fixed_map
    } else {
        on_memory_access
    };
    if asid == ASID_EVERY_BLOCK {
        // Safety: `tb` is being translated; `asid_stale` is a u64 inside our
        // scoreboard's `Score` entries.
        unsafe {
            qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(
                tb,
                qemu_plugin_op::QEMU_PLUGIN_INLINE_STORE_U64,
                shim.asid_stale,
                1,
            );
        }
    }
    let memory_flags = if asid == ASID_NONE {
        qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS
    } else {
        qemu_plugin_cb_flags::QEMU_PLUGIN_CB_R_REGS
    };
    // icount (see `Score`), in this order at the block's start: take off
    // what the block before did not run, [record the block,] add this
    // block's length; then before each instruction, store how many follow.
    if events.insn {
        // `on_block_exec` runs at every block anyway: it takes it off.
        let sequence = shim.next_block_id.fetch_add(1, Ordering::Relaxed);
        let block = chunk::block_id(sequence, (n as u64).clamp(1, chunk::MAX_BLOCK_INSNS));
        // Safety: `tb` is the block being translated.
        let message = unsafe { describe_block(tb, block) };
        let vcpu = THREAD_VCPU
            .with(|v| v.get())
            .min(shim.vcpus.len() as u32 - 1);
        shim.slot(vcpu).push_meta(header, shim.overflow(), &message);
        // Safety: `tb` is being translated; `block` travels as `udata`, an
        // integer never dereferenced.
        unsafe {
            qemu_plugin_register_vcpu_tb_exec_cb(
                tb,
                Some(on_block_exec),
                qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                block as *mut c_void,
            );
        }
    } else {
        // Safety: `tb` is being translated; `left` is a u64 inside our
        // scoreboard's entries, and the callback ignores its null `udata`.
        unsafe {
            qemu_plugin_register_vcpu_tb_exec_cond_cb(
                tb,
                Some(on_block_stopped_early),
                qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                qemu_plugin_cond::QEMU_PLUGIN_COND_NE,
                shim.left,
                0,
                std::ptr::null_mut(),
            );
        }
    }
    // Safety: `tb` is being translated; `icount` is a u64 inside our
    // scoreboard's entries.
    unsafe {
        qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(
            tb,
            qemu_plugin_op::QEMU_PLUGIN_INLINE_ADD_U64,
            shim.icount,
            n as u64,
        );
    }
    let stop = shim.instrumented_stop.load(Ordering::Relaxed);
    let start = shim.instrumented_start.load(Ordering::Relaxed);
    for i in 0..n {
        // Safety: `i < n`, the instruction count of `tb`, which is being translated.
        let insn = unsafe { qemu_plugin_tb_get_insn(tb, i) };
        // Safety: `insn` is an instruction of the block being translated.
        if start != NO_STOP && unsafe { qemu_plugin_insn_vaddr(insn) } == start {
            // Safety: as above; `on_start_pc` has the instruction callback's
            // type and ignores its null `udata`.
            unsafe {
                qemu_plugin_register_vcpu_insn_exec_cb(
                    insn,
                    Some(on_start_pc),
                    qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                    std::ptr::null_mut(),
                );
            }
        }
        // Safety: `insn` is an instruction of the block being translated.
        if stop != NO_STOP && unsafe { qemu_plugin_insn_vaddr(insn) } == stop {
            // Safety: as above; `on_stop_pc` has the instruction callback's
            // type and ignores its null `udata`.
            unsafe {
                qemu_plugin_register_vcpu_insn_exec_cb(
                    insn,
                    Some(on_stop_pc),
                    qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                    std::ptr::null_mut(),
                );
            }
        }
        // Safety: `insn` is an instruction of the block being translated;
        // `left` is a u64 inside our scoreboard's entries.
        unsafe {
            qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
                insn,
                qemu_plugin_op::QEMU_PLUGIN_INLINE_STORE_U64,
                shim.left,
                (n - i - 1) as u64,
            );
        }
        // Safety: `insn` is an instruction of the block being translated.
        if asid == ASID_ON_WRITES && unsafe { writes_context_register(insn) } {
            // Safety: as above; `asid_stale` is a u64 inside our scoreboard's entries.
            unsafe {
                qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
                    insn,
                    qemu_plugin_op::QEMU_PLUGIN_INLINE_STORE_U64,
                    shim.asid_stale,
                    1,
                );
            }
        }
        if events.wants_memory() {
            // The instruction's address travels as the callback's user data:
            // nothing to allocate or free per instruction.
            // Safety: `insn` is an instruction of the block being translated.
            let pc = unsafe { qemu_plugin_insn_vaddr(insn) };
            // Safety: as above; `memory_callback` has the memory callback's
            // type, and `pc` travels as `udata`, an integer never dereferenced.
            unsafe {
                qemu_plugin_register_vcpu_mem_cb(
                    insn,
                    Some(memory_callback),
                    memory_flags,
                    qemu_plugin_mem_rw::QEMU_PLUGIN_MEM_RW,
                    pc as *mut c_void,
                );
            }
        }
    }
}

/// Whether `insn` writes the context register (AArch64: TTBR0_EL1).
///
/// # Safety
/// `insn` must be an instruction of the block being translated (in the
/// translation callback).
unsafe fn writes_context_register(insn: *mut qemu_plugin_insn) -> bool {
    let mut bytes = [0u8; 4];
    // Safety: `insn` is valid (as required above); QEMU copies at most
    // `bytes.len()` bytes into `bytes`.
    let len =
        unsafe { qemu_plugin_insn_data(insn, bytes.as_mut_ptr() as *mut c_void, bytes.len()) };
    asid::writes_ttbr0_el1(&bytes[..len.min(bytes.len())])
}

/// The `Meta.block` message for a translated block: each instruction's
/// address, bytes and QEMU's disassembly, stored once per translation.
///
/// # Safety
/// `tb` must be the block being translated (in the translation callback).
unsafe fn describe_block(tb: *mut qemu_plugin_tb, block: u64) -> Vec<u8> {
    // Safety: `tb` is valid (as required above), and so are its instructions.
    let n = unsafe { qemu_plugin_tb_n_insns(tb) };
    let mut msg = capnp::message::Builder::new_default();
    let mut b = msg.init_root::<meta::Builder>().init_block();
    b.set_id(block);
    // Safety: `tb` is valid.
    b.set_pc(unsafe { qemu_plugin_tb_vaddr(tb) });
    let mut insns = b.init_insns(n as u32);
    let mut disassembly = shim().disassembler.block();
    for i in 0..n {
        // Safety: `i < n`, the instruction count of `tb`.
        let insn = unsafe { qemu_plugin_tb_get_insn(tb, i) };
        let mut out = insns.reborrow().get(i as u32);
        // Safety: `insn` is an instruction of `tb`, valid as it is.
        let pc = unsafe { qemu_plugin_insn_vaddr(insn) };
        out.set_pc(pc);
        let mut bytes = [0u8; 64];
        // Safety: `insn` is valid; QEMU copies at most `bytes.len()` bytes into `bytes`.
        let len =
            unsafe { qemu_plugin_insn_data(insn, bytes.as_mut_ptr() as *mut c_void, bytes.len()) };
        let bytes = &bytes[..len.min(bytes.len())];
        out.set_bytes(bytes);
        // Safety: `insn` is an instruction of the block being translated.
        if let Some(text) = unsafe { disassembly.next(insn, pc, bytes) } {
            out.set_disas(text.as_str());
        }
        // Safety: `insn` is valid; QEMU answers null or a name in its symbol table.
        let symbol = unsafe { qemu_plugin_insn_symbol(insn) };
        if !symbol.is_null() {
            // Safety: non-null: a C string in QEMU's symbol table, kept for its life.
            out.set_symbol(unsafe { CStr::from_ptr(symbol) }.to_string_lossy().as_ref());
        }
    }
    capnp::serialize::write_message_to_words(&msg)
}

// ------------------------------------------------------ the hot callbacks

/// Every data access of every instrumented instruction. `udata` is the
/// instruction's address. This part only decides whether the access is an
/// event; `record_access` records it.
///
/// # Safety
/// Only called by QEMU, as the memory callback `on_translate` registers, on
/// vCPU `vcpu`'s thread.
unsafe extern "C" fn on_memory_access(
    vcpu: c_uint,
    info: qemu_plugin_meminfo_t,
    vaddr: u64,
    udata: *mut c_void,
) {
    let shim = shim();
    // Safety: this memory callback's `info` and `vaddr`.
    let Some((slot, attached)) = (unsafe { memory_callback_start(shim, vcpu, info, vaddr) }) else {
        return;
    };
    // Safety: `info` and `vaddr` are this memory callback's.
    let hwaddr = unsafe { qemu_plugin_get_hwaddr(info, vaddr) };
    // Safety: `hwaddr` is non-null (checked first), QEMU's for this access.
    let is_io = !hwaddr.is_null() && unsafe { qemu_plugin_hwaddr_is_io(hwaddr) };
    if !is_io && !shim.events().mem {
        return; // `events=mmio`: a RAM access is not an event
    }
    if !attached {
        return detached(shim, slot);
    }
    // Safety: vCPU `vcpu`'s memory callback, with its `info` and `vaddr`, and
    // the `hwaddr` QEMU gave for them.
    unsafe {
        record_access(
            shim,
            vcpu,
            info,
            vaddr,
            hwaddr,
            Target::of(is_io),
            udata as u64,
        )
    };
}

/// What both memory callbacks do first: nothing more when the shim does not
/// record (`None`); else publish what the collector asked for, and say
/// whether a collector is attached.
///
/// # Safety
/// Only from a memory callback of vCPU `vcpu`, with its `info` and `vaddr`.
#[inline(always)]
unsafe fn memory_callback_start(
    shim: &Shim,
    vcpu: c_uint,
    info: qemu_plugin_meminfo_t,
    vaddr: u64,
) -> Option<(&VcpuSlot, bool)> {
    let header = shim.header();
    let slot = shim.slot(vcpu);
    // First: a collector that detaches asks for a flush and then stops us.
    if slot.flush_asked(header) {
        slot.flush(header, shim.overflow());
    }
    match attach::recording(header) {
        Some(attached) => Some((slot, attached)),
        // Safety: as this function's.
        None if attach::armed(header) && unsafe { starts_recording(header, info, vaddr) } => {
            Some((slot, true))
        }
        None => None,
    }
}

/// While the collector waits for its start trigger (`Armed`): whether this
/// access is an I/O access it starts the recording with (`attach
/// --from-device`), and if so, starts it.
///
/// # Safety
/// Only from a memory callback, with its `info` and `vaddr`.
#[cold]
#[inline(never)]
unsafe fn starts_recording(header: &Header, info: qemu_plugin_meminfo_t, vaddr: u64) -> bool {
    if !attach::start_by_access(header) {
        return false;
    }
    // Safety: `info` and `vaddr` are a memory callback's (as required).
    let hwaddr = unsafe { qemu_plugin_get_hwaddr(info, vaddr) };
    // Safety: `hwaddr` is non-null (checked first), QEMU's for this access.
    if hwaddr.is_null() || !unsafe { qemu_plugin_hwaddr_is_io(hwaddr) } {
        return false;
    }
    // Safety: non-null, QEMU's for this access.
    let paddr = unsafe { qemu_plugin_hwaddr_phys_addr(hwaddr) };
    // A race with another vCPU's trigger: whichever wins, both record.
    attach::hits_start_range(header, paddr)
        && (attach::start_at_trigger(header) || attach::recording(header) == Some(true))
}

impl Shim {
    /// The cores have no MMU (a virtual address is the physical one) and
    /// the board's memory map is the one it was created with: Cortex-M and
    /// -R (`arm` without an MMU context register). Known once every vCPU is
    /// initialised, before any block is translated.
    fn fixed_map(&self) -> bool {
        self.arm && self.asid_staleness.load(Ordering::Relaxed) == ASID_NONE
    }
}

/// `on_memory_access` for cores with a fixed memory map (`Shim::fixed_map`):
/// an access inside a RAM or ROM region of the map the collector published
/// (`Header::is_memory`) is one without asking QEMU anything (with
/// `events=mmio`, it is then no event at all), and an I/O access is named
/// once per address (`VcpuSlot::device_at`).
///
/// # Safety
/// As `on_memory_access`.
unsafe extern "C" fn on_memory_access_fixed_map(
    vcpu: c_uint,
    info: qemu_plugin_meminfo_t,
    vaddr: u64,
    udata: *mut c_void,
) {
    let shim = shim();
    let header = shim.header();
    // Safety: this memory callback's `info` and `vaddr`.
    let Some((slot, attached)) = (unsafe { memory_callback_start(shim, vcpu, info, vaddr) }) else {
        return;
    };
    // Safety: a vCPU's memory callbacks run on its thread only.
    let (flags, _) = unsafe { slot.access_kinds.of(info) };
    let (hwaddr, target) = if header.is_memory(vaddr, flags & chunk::FLAG_STORE != 0) {
        (std::ptr::null_mut(), Target::Memory)
    } else if let Some(device) = slot.device_met(header, vaddr) {
        // An address this vCPU met as I/O under this attach: the fixed map
        // keeps it I/O, and without an MMU its physical address is `vaddr`:
        // QEMU is not asked (m3loop's 10M MMIO accesses: 3.06 -> 2.93 s).
        (std::ptr::null_mut(), Target::KnownDevice(device))
    } else {
        // Safety: `info` and `vaddr` are this memory callback's.
        let hwaddr = unsafe { qemu_plugin_get_hwaddr(info, vaddr) };
        (
            hwaddr,
            // Safety: `hwaddr` is non-null (checked first), QEMU's for this access.
            Target::of(!hwaddr.is_null() && unsafe { qemu_plugin_hwaddr_is_io(hwaddr) }),
        )
    };
    if target == Target::Memory && !shim.events().mem {
        return; // `events=mmio`: a RAM access is not an event
    }
    if !attached {
        return detached(shim, slot);
    }
    // Safety: vCPU `vcpu`'s memory callback, with its `info` and `vaddr`, and
    // a `hwaddr` that is null or QEMU's for them (QEMU's for `Target::Io`).
    unsafe { record_access(shim, vcpu, info, vaddr, hwaddr, target, udata as u64) };
}

/// An event while no collector is attached: it is lost; what was gathered
/// while one was is published first (for the next collector).
#[cold]
#[inline(never)]
fn detached(shim: &Shim, slot: &VcpuSlot) {
    slot.flush(shim.header(), shim.overflow());
    slot.count_lost(1);
}

/// What a memory callback knows of where an access went.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Memory,
    /// I/O, device still to be looked up (QEMU's `hwaddr` for it is known).
    Io,
    /// I/O at an address whose device this vCPU already knows
    /// (`VcpuSlot::device_met`).
    KnownDevice(u16),
}

impl Target {
    fn of(is_io: bool) -> Target {
        if is_io {
            Target::Io
        } else {
            Target::Memory
        }
    }
}

/// Records an access in its vCPU's open chunk. Kept out of line, so that
/// the accesses `on_memory_access` filters out (with `events=mmio` every RAM
/// access: 162M on the arm64 boot, for 5k MMIO ones) run a short function:
/// `null-mmio` on that boot took 7.55 s instead of 7.94 s (medians of 5
/// alternating runs, 2026-12-01).
///
/// # Safety
/// Only from a memory callback of vCPU `vcpu`, on its thread, with that
/// callback's `info` and `vaddr`, and `hwaddr` null or QEMU's
/// `qemu_plugin_get_hwaddr` for them (non-null for `Target::Io`).
#[inline(never)]
unsafe fn record_access(
    shim: &Shim,
    vcpu: c_uint,
    info: qemu_plugin_meminfo_t,
    vaddr: u64,
    hwaddr: *mut qemu_plugin_hwaddr,
    target: Target,
    pc: u64,
) {
    let header = shim.header();
    let slot = shim.slot(vcpu);
    let is_io = target != Target::Memory;
    let paddr = if hwaddr.is_null() {
        vaddr
    } else {
        // Safety: non-null here, QEMU's for this access (as required above).
        unsafe { qemu_plugin_hwaddr_phys_addr(hwaddr) }
    };
    let device = match target {
        Target::Memory => chunk::NO_DEVICE,
        Target::KnownDevice(device) => device,
        // Safety: `Target::Io`: `hwaddr` is non-null and QEMU's; the closure
        // runs within this callback.
        Target::Io if shim.fixed_map() => {
            slot.device_at(header, shim.overflow(), paddr, || unsafe {
                qemu_plugin_hwaddr_device_name(hwaddr)
            })
        }
        Target::Io => {
            // Safety: `Target::Io`: `hwaddr` is non-null and QEMU's for this access.
            let name = unsafe { qemu_plugin_hwaddr_device_name(hwaddr) };
            slot.device_id(header, shim.overflow(), name)
        }
    };
    // Safety: `info` is this memory callback's.
    let (value, high) = unsafe { access_value(info) };
    // Safety: a vCPU's memory callbacks run on its thread only.
    let (mut flags, size) = unsafe { slot.access_kinds.of(info) };
    if is_io {
        flags |= chunk::FLAG_IO;
    }
    let score = shim.score(vcpu);
    let mut access = MemAccess {
        pc,
        vaddr,
        paddr,
        value,
        icount_delta: 0,
        size,
        flags,
        device,
    };
    slot.record_access(
        header,
        shim.overflow(),
        // Safety: `score` is this vCPU's entry (`Shim::score`), only touched on
        // its thread, which this is.
        unsafe { (*score).icount_of_current() },
        // Safety: a memory callback of `vcpu`, on its thread, with its entry.
        unsafe { shim.asid_of(vcpu, score) },
        &mut access,
        high,
    );
    if is_io && attach::hits_stop_range(header, paddr) {
        // `attach --until-device`: this access is the window's last.
        attach::stop_at_trigger(header);
        slot.flush(header, shim.overflow());
    }
}

impl Shim {
    /// The vCPU's address-space id, read from its context register only by
    /// the first emitted access after the value read before went stale (on
    /// AArch64: a write to TTBR0_EL1 or a resume; elsewhere: a new block).
    /// The read goes through QEMU's gdbstub register path and costs more
    /// than the rest of the callback. Only called from memory callbacks,
    /// registered with R_REGS when the core has a context register.
    ///
    /// # Safety
    /// Only from a memory callback of vCPU `vcpu`, on its thread, with
    /// `score` its scoreboard entry (`Shim::score`).
    #[inline(always)]
    unsafe fn asid_of(&self, vcpu: c_uint, score: *mut Score) -> u64 {
        let slot = &self.asids[vcpu as usize];
        // Safety: only this vCPU's thread touches `score` and `slot`; memory
        // callbacks have R_REGS whenever a vCPU has a context register (else
        // its slot has none and `refresh` reads nothing).
        unsafe {
            if (*score).asid_stale != 0 {
                slot.refresh();
                (*score).asid_stale = 0;
            }
        }
        slot.value()
    }

    /// The vCPU's scoreboard entry, for the callbacks of translated blocks.
    /// Only the vCPU's own thread touches the entry (its inline ops and its
    /// callbacks), so plain reads and writes do.
    ///
    /// QEMU moves the scoreboard when it grows (at the init of a vCPU beyond
    /// its allocation), so an address is only good until then. But QEMU's
    /// own inline ops have each block's entry address compiled in, so it
    /// grows the scoreboard only with every vCPU stopped and then throws
    /// away every translated block: a block that runs after a move was
    /// translated after it, and `on_translate` took the new address before
    /// the block could run. So the address of the last translation is good
    /// in every callback of a translated block; the callbacks that are not
    /// (vCPU init and resume, exit) use `score_looked_up`. Entries are
    /// `size_of::<Score>()` apart, the size the scoreboard was made with.
    /// Asking QEMU at every callback instead cost 4-8% of the CPU time of an
    /// insn or a mem capture of the arm64 boot (benches/RESULTS.md,
    /// 2026-12-02).
    ///
    /// Relaxed: every store is of the current address (translation is
    /// excluded while QEMU moves the scoreboard), and QEMU's publication of
    /// a translated block orders the store before its callbacks run.
    #[inline(always)]
    fn score(&self, vcpu: c_uint) -> *mut Score {
        // Safety: from a translated block's callback (all callers), `score_base`
        // is set, and QEMU's array of `Score`s there holds the running `vcpu`.
        unsafe { self.score_base.load(Ordering::Relaxed).add(vcpu as usize) }
    }

    /// The vCPU's scoreboard entry, asked of QEMU: for callbacks outside
    /// translated blocks.
    fn score_looked_up(&self, vcpu: c_uint) -> *mut Score {
        // Safety: our scoreboard; QEMU asserts `vcpu` is an initialised vCPU
        // and returns its `Score`-sized entry.
        unsafe { qemu_plugin_scoreboard_find(self.icount.score, vcpu) as *mut Score }
    }

    /// Takes the scoreboard's address again (see `score`).
    fn find_score_base(&self) {
        // Safety: our scoreboard; vCPU 0 is initialised before any translation.
        let base = unsafe { qemu_plugin_scoreboard_find(self.icount.score, 0) as *mut Score };
        self.score_base.store(base, Ordering::Relaxed);
    }
}

/// A vCPU's scoreboard entry: the counters QEMU's generated code updates
/// inline.
///
/// The instruction count is kept per block, not per instruction: an inline
/// add of 1 before every instruction makes every instruction wait for the
/// one before's add to reach memory (about 2 ns each on the benchmark
/// machine, half again the floor's time). Instead, each block adds its
/// length to `icount` when it starts, and each of its instructions stores,
/// before it runs, how many of the block's instructions follow it in `left`
/// (a store of a constant: nothing waits on it). A block that ran to its
/// end leaves 0 there; one that stopped early on an exception leaves the
/// number it did not run, which the next block takes off `icount` before
/// anything else (`take_off_unrun`). So, as with a count per instruction:
/// at any point `icount - left` is the number of instructions started, the
/// one running included, and an instruction that raised an exception counts
/// as started.
#[repr(C)]
struct Score {
    /// Instructions started, counting the running block whole.
    icount: u64,
    /// The ASID read last may be stale (`Shim::asid_stale`).
    asid_stale: u64,
    /// The running block's instructions after the one started last.
    left: u64,
    /// What QEMU's code is instrumented for must change (`Shim::wake`).
    wake: u64,
}

impl Score {
    /// Instructions started, the running one included.
    #[inline(always)]
    fn started(&self) -> u64 {
        self.icount.wrapping_sub(self.left)
    }

    /// The 0-based index of the running instruction.
    #[inline(always)]
    fn icount_of_current(&self) -> u64 {
        self.started().wrapping_sub(1)
    }

    /// At a block's start: the block before stopped early, leaving `left`
    /// of its instructions unrun: they do not count.
    #[inline(always)]
    fn take_off_unrun(&mut self) {
        self.icount = self.started();
        self.left = 0;
    }
}

/// A block starts after one that stopped early (`Score`); registered as a
/// conditional callback (`left != 0`) when no other callback runs at every
/// block.
///
/// # Safety
/// Only called by QEMU, as the conditional callback `on_translate` registers,
/// on vCPU `vcpu`'s thread.
unsafe extern "C" fn on_block_stopped_early(vcpu: c_uint, _udata: *mut c_void) {
    // Safety: a translated block's callback (`Shim::score`), on the vCPU's
    // thread, the only one touching its entry.
    unsafe { (*shim().score(vcpu)).take_off_unrun() };
}

/// The accessed value as (low 8 bytes, zero-extended; high 8 bytes of a
/// 16-byte access). Without a branch on the value's type: a `match` on it
/// compiled to a jump table whose mispredictions (guests mix access sizes)
/// took a fifth of `record_access`'s time on the arm64 boot.
///
/// # Safety
/// `info` must be the meminfo of the running memory callback.
#[inline(always)]
unsafe fn access_value(info: qemu_plugin_meminfo_t) -> (u64, Option<u64>) {
    /// The low bytes each type holds: `U8`, `U16`, `U32`, `U64`, `U128`.
    const MASK: [u64; 5] = [0xff, 0xffff, 0xffff_ffff, u64::MAX, u64::MAX];
    // Safety: `info` is the running memory callback's (as required above).
    let v = unsafe { qemu_plugin_mem_get_value(info) };
    // Read through the widest member: the bytes beyond a narrow value's are
    // whatever QEMU's C code left there, which the mask drops.
    // Safety: every member is plain integers, so the 16 bytes QEMU returned
    // are a valid `u128_`.
    let (low, high) = unsafe { (v.data.u128_.low, v.data.u128_.high) };
    let t = (v.type_ as usize).min(MASK.len() - 1);
    let wide = v.type_ == qemu_plugin_mem_value_type::QEMU_PLUGIN_MEM_VALUE_U128;
    (low & MASK[t], wide.then_some(high))
}

/// A translated block starts executing (`events=insn`). `udata` is its id;
/// the collector expands it into one row per executed instruction using the
/// block's `Meta.block` and the next block's icount.
///
/// # Safety
/// Only called by QEMU, as the block callback `on_translate` registers (with
/// the block's id as `udata`), on vCPU `vcpu`'s thread.
unsafe extern "C" fn on_block_exec(vcpu: c_uint, udata: *mut c_void) {
    let shim = shim();
    // First, whatever the state: the count must stay right while no
    // collector is attached too.
    let score = shim.score(vcpu);
    // Safety: a translated block's callback (`Shim::score`), on the vCPU's
    // thread, the only one touching its entry.
    let stopped_early = unsafe { (*score).left } != 0;
    // Safety: the same entry, on the same thread.
    unsafe { (*score).take_off_unrun() };
    let header = shim.header();
    let slot = shim.slot(vcpu);
    // First: a collector that detaches asks for a flush and then stops us.
    if slot.flush_asked(header) {
        slot.flush(header, shim.overflow());
    }
    match attach::recording(header) {
        Some(true) => {}
        Some(false) => return detached(shim, slot),
        None => return,
    }
    let attach = header.attach_count.load(Ordering::Relaxed);
    if attach != shim.described_for_attach.load(Ordering::Relaxed) {
        describe_blocks_again(shim, attach);
    }
    slot.record_block(
        header,
        shim.overflow(),
        // This callback runs before the block adds its length.
        // Safety: the same entry, on the same thread.
        unsafe { (*score).icount },
        udata as u64,
        stopped_early,
    );
}

// ------------------------------------------------------------------- exit

/// How long the exiting thread waits for a paused vCPU to reach its idle
/// callback (it is on its way: microseconds) before taking it as running.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// QEMU is exiting: publish each vCPU's last chunks and final counters, tell
/// the collector, remove the segment's name. The mapping stays (vCPU
/// threads may still be finishing).
///
/// Only the chunks of vCPUs that cannot touch them are published (see
/// `vcpu::Life`): this thread's own vCPU (one that called `exit()` itself,
/// as Arm semihosting's SYS_EXIT does), and the vCPUs idle or paused. One
/// that still runs (another vCPU, when one called `exit()`) keeps its last,
/// partial chunk: we say so on stderr.
///
/// # Safety
/// Only called by QEMU, as the atexit callback.
unsafe extern "C" fn on_exit(_id: qemu_plugin_id_t, _udata: *mut c_void) {
    let shim = shim();
    let this_thread = THREAD_HAS_VCPU
        .with(|h| h.get())
        .then(|| THREAD_VCPU.with(|v| v.get()));
    for slot in shim.vcpus.iter() {
        let mine = this_thread == Some(slot.index());
        if !mine && !slot.take_for_exit(EXIT_WAIT) {
            if slot.ran() {
                eprintln!(
                    "trace-shim: vCPU {} was still running when QEMU exited: its last \
                     events (at most one chunk) are not in the capture",
                    slot.index()
                );
            }
            continue;
        }
        // Safety: the slot's chunks and scoreboard entry are still: its vCPU
        // runs this callback, or waits (idle, or in its resume callback).
        let icount = unsafe { (*shim.score_looked_up(slot.index())).started() };
        slot.publish_final(shim.header(), shim.overflow(), icount);
    }
    // Release: the counters and every event published before are visible to a
    // collector that sees `qemu_exited` with Acquire.
    shim.header().qemu_exited.store(1, Ordering::Release);
    shim.segment.unlink();
}
