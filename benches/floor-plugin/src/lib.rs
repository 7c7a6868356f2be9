//! The floor: the cheapest QEMU TCG plugin that sees what the trace shim sees.
//!
//! `mode=mem` (default) registers a memory callback on every instruction, as
//! the shim does for `events=mem` and `events=mmio`; `mode=exec` registers an
//! exec callback on every instruction, the cheapest way a plugin sees every
//! executed instruction one by one; `mode=block` an exec callback on every
//! translated block, the cheapest way to see every executed block (as the
//! shim does for `events=insn`). Each callback's body only increments a
//! per-vCPU counter, so what the guest pays is QEMU's own cost of calling a
//! plugin: any tracer built on these callbacks costs at least this much.
//!
//! `ask=` (with `mode=mem`) makes the memory callback also ask QEMU what a
//! tracer must know of each access, and nothing more: `ask=io` whether it
//! hit I/O (`qemu_plugin_get_hwaddr`, `qemu_plugin_hwaddr_is_io`) and, for
//! an I/O access, the device's name (`qemu_plugin_hwaddr_device_name`):
//! what any plugin capturing MMIO accesses must ask at every access, since
//! the API cannot register a callback for I/O accesses only; `ask=data`
//! also the physical address and the value (`qemu_plugin_hwaddr_phys_addr`,
//! `qemu_plugin_mem_get_value`): what any capture of every access with its
//! value must ask. The gap between `ask=none` and these is QEMU's price for
//! the information, which no plugin can avoid.
//!
//! `inline=on` also counts instructions inline as the shim does for icount
//! (see the shim's `Score`: per block an add of its length, before each
//! instruction a store of how many of the block's follow it, and a
//! conditional callback after a block that stopped early), to tell apart
//! the cost of that counting from the cost of the callbacks. `inline=insn`
//! counts with an inline add before every instruction instead (what the shim
//! did before); `inline=padded` the same with 128 bytes per vCPU in the
//! scoreboard, so that the vCPUs' counters do not share a cache line.
//!
//! At exit it prints one line on stderr, `floor: mode=mem inline=off
//! callbacks=N vcpus=[n0, n1, ...]`, with a counter a second one,
//! `floor: icount=N` (instructions started, all vCPUs), and with `ask=io` or
//! `ask=data` a third, `floor: io=N` (I/O accesses: the rows of `mmio` a
//! capture of the same run holds).
//!
//! `-plugin libbench_floor.so[,mode=mem|exec|block][,inline=on|off|insn|padded][,ask=none|io|data]`

use qemu_plugin_sys::*;
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

#[no_mangle]
pub static qemu_plugin_version: c_int = QEMU_PLUGIN_VERSION as c_int;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Mem,
    Exec,
    Block,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Mem => "mem",
            Mode::Exec => "exec",
            Mode::Block => "block",
        }
    }
}

/// What the memory callback asks QEMU about each access (see the module
/// docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ask {
    Nothing,
    Io,
    Data,
}

impl Ask {
    fn name(self) -> &'static str {
        match self {
            Ask::Nothing => "none",
            Ask::Io => "io",
            Ask::Data => "data",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Options {
    mode: Mode,
    inline: Inline,
    ask: Ask,
}

/// The inline instruction counter: none; as the shim counts (per block);
/// an add per instruction in a scoreboard of one u64 per vCPU; or the same
/// padded to 128 bytes per vCPU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Inline {
    Off,
    Block,
    Insn,
    Padded,
}

impl Inline {
    fn name(self) -> &'static str {
        match self {
            Inline::Off => "off",
            Inline::Block => "on",
            Inline::Insn => "insn",
            Inline::Padded => "padded",
        }
    }
}

/// A vCPU's scoreboard entry for `inline=on`, as the shim's `Score`.
#[repr(C)]
struct Score {
    /// Instructions started, counting the running block whole.
    icount: u64,
    /// The running block's instructions after the one started last.
    left: u64,
}

/// One vCPU's counters, alone on their cache line (the vCPU threads of
/// MTTCG must not share lines). Only this vCPU's thread writes them, so a
/// load and a store do (no read-modify-write).
#[repr(align(128))]
struct Counter {
    callbacks: AtomicU64,
    /// `ask=io|data`: accesses that hit I/O.
    io: AtomicU64,
    /// `ask=data`: the values and physical addresses, folded, so that they
    /// are read as a tracer reads them.
    folded: AtomicU64,
}

impl Counter {
    #[inline(always)]
    fn add(c: &AtomicU64, n: u64) {
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
}

struct Floor {
    options: Options,
    counters: Box<[Counter]>,
    /// The inline instruction counter (`Score::icount` for `inline=on`).
    icount: qemu_plugin_u64,
    /// `Score::left` (`inline=on`).
    left: qemu_plugin_u64,
}

static FLOOR: AtomicPtr<Floor> = AtomicPtr::new(std::ptr::null_mut());

#[inline(always)]
fn floor() -> &'static Floor {
    // Relaxed: stored before any callback is registered; QEMU orders that
    // before the callbacks run.
    // Safety: only our callbacks call this, and `qemu_plugin_install` stores
    // `FLOOR` (a leaked Box, never freed) before it registers any of them.
    unsafe { &*FLOOR.load(Ordering::Relaxed) }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        mode: Mode::Mem,
        inline: Inline::Off,
        ask: Ask::Nothing,
    };
    for a in args {
        match a.split_once('=') {
            Some(("mode", "mem")) => o.mode = Mode::Mem,
            Some(("mode", "exec")) => o.mode = Mode::Exec,
            Some(("mode", "block")) => o.mode = Mode::Block,
            Some(("inline", "off")) => o.inline = Inline::Off,
            Some(("inline", "on")) => o.inline = Inline::Block,
            Some(("inline", "insn")) => o.inline = Inline::Insn,
            Some(("inline", "padded")) => o.inline = Inline::Padded,
            Some(("ask", "none")) => o.ask = Ask::Nothing,
            Some(("ask", "io")) => o.ask = Ask::Io,
            Some(("ask", "data")) => o.ask = Ask::Data,
            _ => {
                return Err(format!(
                "unknown or malformed option {a:?} (expected mode=mem|exec|block, inline=on|off|insn|padded, ask=none|io|data)"
            ))
            }
        }
    }
    if o.ask != Ask::Nothing && o.mode != Mode::Mem {
        return Err(format!(
            "ask={} needs mode=mem (only a memory callback has an access to ask about)",
            o.ask.name()
        ));
    }
    Ok(o)
}

/// QEMU's entry point for the plugin.
///
/// # Safety
/// Called by QEMU only: `info` points to a valid `qemu_info_t` and `argv` to
/// `argc` NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn qemu_plugin_install(
    id: qemu_plugin_id_t,
    info: *const qemu_info_t,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    // Safety: QEMU's contract (above): `argv` holds `argc` C strings.
    let args = unsafe { trace_schema::options::plugin_args(argc, argv as *const *const c_char) };
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("floor plugin: {e}");
            return -1;
        }
    };
    // Safety: QEMU's contract: `info` is valid for this call, and is only
    // read during it.
    let info = unsafe { &*info };
    let n_vcpus = if info.system_emulation {
        // Safety: QEMU fills the union's `system` when `system_emulation` is
        // set (checked just above).
        unsafe { info.__bindgen_anon_1.system.max_vcpus }.max(1) as usize
    } else {
        // User mode: threads come and go; 256 is plenty for a benchmark.
        256
    };
    let counters = (0..n_vcpus)
        .map(|_| Counter {
            callbacks: AtomicU64::new(0),
            io: AtomicU64::new(0),
            folded: AtomicU64::new(0),
        })
        .collect();
    let size = match options.inline {
        Inline::Off => 0,
        Inline::Block => std::mem::size_of::<Score>(),
        Inline::Insn => std::mem::size_of::<u64>(),
        Inline::Padded => 128,
    };
    let score = if size > 0 {
        // Safety: no precondition. The scoreboard is never freed; `icount`
        // (offset 0) fits in every `size` here, and `left` (offset 8) is used
        // only with `inline=on`, whose entries are `Score`s.
        unsafe { qemu_plugin_scoreboard_new(size) }
    } else {
        std::ptr::null_mut()
    };
    let built = Box::new(Floor {
        options,
        counters,
        icount: qemu_plugin_u64 {
            score,
            offset: std::mem::offset_of!(Score, icount),
        },
        left: qemu_plugin_u64 {
            score,
            offset: std::mem::offset_of!(Score, left),
        },
    });
    FLOOR.store(Box::into_raw(built), Ordering::Release);
    // Safety: `id` is QEMU's for this install; `FLOOR` is stored above, as the
    // callbacks' `floor()` needs; `on_exit` ignores its null `udata`.
    unsafe {
        qemu_plugin_register_vcpu_tb_trans_cb(id, Some(on_translate));
        qemu_plugin_register_atexit_cb(id, Some(on_exit), std::ptr::null_mut());
    }
    0
}

/// The translation callback: registers this block's inline ops and callbacks.
///
/// # Safety
/// Called by QEMU only, with a `tb` valid for the call, after install set
/// `FLOOR`.
unsafe extern "C" fn on_translate(_id: qemu_plugin_id_t, tb: *mut qemu_plugin_tb) {
    let f = floor();
    let o = f.options;
    // Safety: `tb` is valid during this translation callback.
    let n = unsafe { qemu_plugin_tb_n_insns(tb) };
    if o.inline == Inline::Block {
        // Safety: `tb` is being translated (QEMU allows registering on it
        // now); `inline=on` made the scoreboard with `Score` entries, which
        // `f.left` and `f.icount` address; the callback ignores its null
        // `udata`.
        unsafe {
            qemu_plugin_register_vcpu_tb_exec_cond_cb(
                tb,
                Some(on_block_stopped_early),
                qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                qemu_plugin_cond::QEMU_PLUGIN_COND_NE,
                f.left,
                0,
                std::ptr::null_mut(),
            );
            qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(
                tb,
                qemu_plugin_op::QEMU_PLUGIN_INLINE_ADD_U64,
                f.icount,
                n as u64,
            );
        }
    }
    if o.mode == Mode::Block {
        // Safety: `tb` is being translated; `on_exec` ignores its null `udata`.
        unsafe {
            qemu_plugin_register_vcpu_tb_exec_cb(
                tb,
                Some(on_exec),
                qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                std::ptr::null_mut(),
            );
        }
    }
    let on_memory_access = match o.ask {
        Ask::Nothing => on_memory_access,
        Ask::Io => on_memory_access_ask_io,
        Ask::Data => on_memory_access_ask_data,
    };
    for i in 0..n {
        // Safety: `tb` is valid for this callback and `i` < its `n` instructions.
        let insn = unsafe { qemu_plugin_tb_get_insn(tb, i) };
        let (op, entry, imm) = match o.inline {
            Inline::Off => (None, f.icount, 0),
            Inline::Block => (
                Some(qemu_plugin_op::QEMU_PLUGIN_INLINE_STORE_U64),
                f.left,
                (n - i - 1) as u64,
            ),
            Inline::Insn | Inline::Padded => (
                Some(qemu_plugin_op::QEMU_PLUGIN_INLINE_ADD_U64),
                f.icount,
                1,
            ),
        };
        if let Some(op) = op {
            // Safety: `insn` is `tb`'s, during its translation; `op` is set
            // only when `inline` made a scoreboard, and `entry` lies in its
            // entries (`left` only for `inline=on`'s `Score`s).
            unsafe { qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, op, entry, imm) };
        }
        match o.mode {
            // Safety: `insn` is `tb`'s, during its translation; the callback
            // (any of the three) ignores its null `udata`.
            Mode::Mem => unsafe {
                qemu_plugin_register_vcpu_mem_cb(
                    insn,
                    Some(on_memory_access),
                    qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                    qemu_plugin_mem_rw::QEMU_PLUGIN_MEM_RW,
                    std::ptr::null_mut(),
                );
            },
            // Safety: as for `Mode::Mem`; `on_exec` ignores its null `udata`.
            Mode::Exec => unsafe {
                qemu_plugin_register_vcpu_insn_exec_cb(
                    insn,
                    Some(on_exec),
                    qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                    std::ptr::null_mut(),
                );
            },
            Mode::Block => {}
        }
    }
}

/// This vCPU's counters.
#[inline(always)]
fn counter(vcpu: c_uint) -> Option<&'static Counter> {
    floor().counters.get(vcpu as usize)
}

/// The whole body of the callbacks without `ask`.
#[inline(always)]
fn count(vcpu: c_uint) {
    if let Some(c) = counter(vcpu) {
        Counter::add(&c.callbacks, 1);
    }
}

/// The memory callback of `ask=none`.
///
/// # Safety
/// Called by QEMU only, on vCPU `vcpu`'s thread, after install set `FLOOR`.
unsafe extern "C" fn on_memory_access(
    vcpu: c_uint,
    _info: qemu_plugin_meminfo_t,
    _vaddr: u64,
    _udata: *mut c_void,
) {
    count(vcpu);
}

/// `ask=io`: is the access I/O, and if so which device (as the shim's
/// `on_memory_access` asks). Returns the access's hwaddr for `ask=data`.
///
/// # Safety
/// Only from a memory callback, with the `info` and `vaddr` QEMU passed it;
/// the hwaddr returned is valid until that callback returns.
#[inline(always)]
unsafe fn ask_io(c: &Counter, info: qemu_plugin_meminfo_t, vaddr: u64) -> *mut qemu_plugin_hwaddr {
    Counter::add(&c.callbacks, 1);
    // Safety: `info` and `vaddr` are the running memory callback's (our
    // contract).
    let hwaddr = unsafe { qemu_plugin_get_hwaddr(info, vaddr) };
    // Safety: `hwaddr` is non-null (checked first) and valid until the
    // memory callback returns.
    if !hwaddr.is_null() && unsafe { qemu_plugin_hwaddr_is_io(hwaddr) } {
        // Safety: as above; the (interned) name is only folded in as a number.
        let name = unsafe { qemu_plugin_hwaddr_device_name(hwaddr) };
        Counter::add(&c.io, 1);
        Counter::add(&c.folded, name as u64);
    }
    hwaddr
}

/// The memory callback of `ask=io`.
///
/// # Safety
/// Called by QEMU only, on vCPU `vcpu`'s thread, with this access's `info`
/// and `vaddr`, after install set `FLOOR`.
unsafe extern "C" fn on_memory_access_ask_io(
    vcpu: c_uint,
    info: qemu_plugin_meminfo_t,
    vaddr: u64,
    _udata: *mut c_void,
) {
    if let Some(c) = counter(vcpu) {
        // Safety: `info` and `vaddr` are what QEMU passed this memory callback.
        unsafe { ask_io(c, info, vaddr) };
    }
}

/// `ask=data`: also the physical address and the value.
///
/// # Safety
/// Called by QEMU only, on vCPU `vcpu`'s thread, with this access's `info`
/// and `vaddr`, after install set `FLOOR`.
unsafe extern "C" fn on_memory_access_ask_data(
    vcpu: c_uint,
    info: qemu_plugin_meminfo_t,
    vaddr: u64,
    _udata: *mut c_void,
) {
    let Some(c) = counter(vcpu) else { return };
    // Safety: `info` and `vaddr` are what QEMU passed this memory callback.
    let hwaddr = unsafe { ask_io(c, info, vaddr) };
    let paddr = if hwaddr.is_null() {
        vaddr
    } else {
        // Safety: a non-null hwaddr of this callback's access, valid until it
        // returns.
        unsafe { qemu_plugin_hwaddr_phys_addr(hwaddr) }
    };
    // Safety: `info` is this memory callback's, as QEMU passed it.
    let v = unsafe { qemu_plugin_mem_get_value(info) };
    // The low 8 bytes of any value type (the union's first member).
    // Safety: the members are all integers, so any 8 bytes are a `u64`.
    // Caveat: for 1/2/4-byte accesses QEMU writes only the low 1/2/4 bytes,
    // the rest stay uninitialised: tolerated since the value only feeds the
    // `folded` checksum, which is never printed.
    let value = unsafe { v.data.u64_ };
    Counter::add(&c.folded, paddr ^ value);
}

/// The exec callback of `mode=exec` (per instruction) and `mode=block`
/// (per block).
///
/// # Safety
/// Called by QEMU only, on vCPU `vcpu`'s thread, after install set `FLOOR`.
unsafe extern "C" fn on_exec(vcpu: c_uint, _udata: *mut c_void) {
    count(vcpu);
}

/// `inline=on`: the block before stopped early, its unrun instructions do
/// not count (the shim's `Score::take_off_unrun`).
///
/// # Safety
/// Called by QEMU only, on vCPU `vcpu`'s thread, after install set `FLOOR`.
unsafe extern "C" fn on_block_stopped_early(vcpu: c_uint, _udata: *mut c_void) {
    let f = floor();
    // Safety: registered only with `inline=on`, so `f.icount` and `f.left`
    // address the `Score` entries of a live scoreboard; QEMU made `vcpu`'s
    // entry before it ran, and only its own thread (this one) touches it.
    unsafe {
        let started = qemu_plugin_u64_get(f.icount, vcpu) - qemu_plugin_u64_get(f.left, vcpu);
        qemu_plugin_u64_set(f.icount, vcpu, started);
        qemu_plugin_u64_set(f.left, vcpu, 0);
    }
}

/// The exit callback: prints the counts.
///
/// # Safety
/// Called by QEMU only, at exit, after install set `FLOOR`.
unsafe extern "C" fn on_exit(_id: qemu_plugin_id_t, _udata: *mut c_void) {
    let f = floor();
    let o = f.options;
    let per_vcpu: Vec<u64> = f
        .counters
        .iter()
        .map(|c| c.callbacks.load(Ordering::Relaxed))
        .collect();
    let total: u64 = per_vcpu.iter().sum();
    eprintln!(
        "floor: mode={} inline={} ask={} callbacks={total} vcpus={per_vcpu:?}",
        o.mode.name(),
        o.inline.name(),
        o.ask.name(),
    );
    if o.inline != Inline::Off {
        // Safety: `inline` is not off, so the scoreboard exists and `icount`
        // (offset 0) lies in its entries.
        let mut started = unsafe { qemu_plugin_u64_sum(f.icount) };
        if o.inline == Inline::Block {
            // Safety: with `inline=on` the entries are `Score`s, holding `left`.
            started -= unsafe { qemu_plugin_u64_sum(f.left) };
        }
        eprintln!("floor: icount={started}");
    }
    if o.ask != Ask::Nothing {
        let io: u64 = f
            .counters
            .iter()
            .map(|c| c.io.load(Ordering::Relaxed))
            .sum();
        eprintln!("floor: io={io}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = |mode, inline, ask| Ok(Options { mode, inline, ask });
        assert_eq!(parse(&args(&[])), o(Mode::Mem, Inline::Off, Ask::Nothing));
        assert_eq!(
            parse(&args(&["mode=exec", "inline=on"])),
            o(Mode::Exec, Inline::Block, Ask::Nothing)
        );
        assert_eq!(
            parse(&args(&["inline=insn"])),
            o(Mode::Mem, Inline::Insn, Ask::Nothing)
        );
        assert_eq!(
            parse(&args(&["inline=padded"])),
            o(Mode::Mem, Inline::Padded, Ask::Nothing)
        );
        assert_eq!(
            parse(&args(&["mode=block", "inline=on"])),
            o(Mode::Block, Inline::Block, Ask::Nothing)
        );
        assert_eq!(
            parse(&args(&["ask=data"])),
            o(Mode::Mem, Inline::Off, Ask::Data)
        );
        assert!(parse(&args(&["mode=insn"])).is_err());
        assert!(parse(&args(&["inline"])).is_err());
        assert!(parse(&args(&["mode=exec", "ask=io"])).is_err());
    }
}
