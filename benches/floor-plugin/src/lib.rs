//! The floor: the cheapest QEMU TCG plugin that sees what the trace shim sees.
//!
//! `mode=mem` (default) registers a memory callback on every instruction, as
//! the shim does for `events=mem` and `events=mmio`; `mode=exec` registers an
//! exec callback on every instruction, the cheapest way a plugin sees every
//! executed instruction one by one. Either callback's body only increments a
//! per-vCPU counter, so what the guest pays is QEMU's own cost of calling a
//! plugin: any tracer built on these callbacks costs at least this much.
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
//! callbacks=N vcpus=[n0, n1, ...]`, and with a counter a second one,
//! `floor: icount=N` (instructions started, all vCPUs).
//!
//! `-plugin libbench_floor.so[,mode=mem|exec][,inline=on|off|insn|padded]`

use qemu_plugin_sys::*;
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

#[no_mangle]
pub static qemu_plugin_version: c_int = QEMU_PLUGIN_VERSION as c_int;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Mem,
    Exec,
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

/// One vCPU's counter, alone on its cache line (the vCPU threads of MTTCG
/// must not share lines).
#[repr(align(128))]
struct Counter(AtomicU64);

struct Floor {
    mode: Mode,
    inline: Inline,
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
    unsafe { &*FLOOR.load(Ordering::Relaxed) }
}

fn parse(args: &[String]) -> Result<(Mode, Inline), String> {
    let mut mode = Mode::Mem;
    let mut inline = Inline::Off;
    for a in args {
        match a.split_once('=') {
            Some(("mode", "mem")) => mode = Mode::Mem,
            Some(("mode", "exec")) => mode = Mode::Exec,
            Some(("inline", "off")) => inline = Inline::Off,
            Some(("inline", "on")) => inline = Inline::Block,
            Some(("inline", "insn")) => inline = Inline::Insn,
            Some(("inline", "padded")) => inline = Inline::Padded,
            _ => {
                return Err(format!(
                "unknown or malformed option {a:?} (expected mode=mem|exec, inline=on|off|insn|padded)"
            ))
            }
        }
    }
    Ok((mode, inline))
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
    let args = unsafe { trace_schema::options::plugin_args(argc, argv as *const *const c_char) };
    let (mode, inline) = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("floor plugin: {e}");
            return -1;
        }
    };
    let info = unsafe { &*info };
    let n_vcpus = if info.system_emulation {
        unsafe { info.__bindgen_anon_1.system.max_vcpus }.max(1) as usize
    } else {
        // User mode: threads come and go; 256 is plenty for a benchmark.
        256
    };
    let counters = (0..n_vcpus).map(|_| Counter(AtomicU64::new(0))).collect();
    let size = match inline {
        Inline::Off => 0,
        Inline::Block => std::mem::size_of::<Score>(),
        Inline::Insn => std::mem::size_of::<u64>(),
        Inline::Padded => 128,
    };
    let score = if size > 0 {
        unsafe { qemu_plugin_scoreboard_new(size) }
    } else {
        std::ptr::null_mut()
    };
    let built = Box::new(Floor {
        mode,
        inline,
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
    unsafe {
        qemu_plugin_register_vcpu_tb_trans_cb(id, Some(on_translate));
        qemu_plugin_register_atexit_cb(id, Some(on_exit), std::ptr::null_mut());
    }
    0
}

unsafe extern "C" fn on_translate(_id: qemu_plugin_id_t, tb: *mut qemu_plugin_tb) {
    let f = floor();
    let n = unsafe { qemu_plugin_tb_n_insns(tb) };
    if f.inline == Inline::Block {
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
    for i in 0..n {
        let insn = unsafe { qemu_plugin_tb_get_insn(tb, i) };
        let (op, entry, imm) = match f.inline {
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
            unsafe { qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(insn, op, entry, imm) };
        }
        match f.mode {
            Mode::Mem => unsafe {
                qemu_plugin_register_vcpu_mem_cb(
                    insn,
                    Some(on_memory_access),
                    qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                    qemu_plugin_mem_rw::QEMU_PLUGIN_MEM_RW,
                    std::ptr::null_mut(),
                );
            },
            Mode::Exec => unsafe {
                qemu_plugin_register_vcpu_insn_exec_cb(
                    insn,
                    Some(on_insn_exec),
                    qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                    std::ptr::null_mut(),
                );
            },
        }
    }
}

/// The whole body of both callbacks. Only this vCPU's thread writes its
/// counter, so a load and a store do (no read-modify-write).
#[inline(always)]
fn count(vcpu: c_uint) {
    if let Some(c) = floor().counters.get(vcpu as usize) {
        c.0.store(c.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

unsafe extern "C" fn on_memory_access(
    vcpu: c_uint,
    _info: qemu_plugin_meminfo_t,
    _vaddr: u64,
    _udata: *mut c_void,
) {
    count(vcpu);
}

unsafe extern "C" fn on_insn_exec(vcpu: c_uint, _udata: *mut c_void) {
    count(vcpu);
}

/// `inline=on`: the block before stopped early, its unrun instructions do
/// not count (the shim's `Score::take_off_unrun`).
unsafe extern "C" fn on_block_stopped_early(vcpu: c_uint, _udata: *mut c_void) {
    let f = floor();
    unsafe {
        let started = qemu_plugin_u64_get(f.icount, vcpu) - qemu_plugin_u64_get(f.left, vcpu);
        qemu_plugin_u64_set(f.icount, vcpu, started);
        qemu_plugin_u64_set(f.left, vcpu, 0);
    }
}

unsafe extern "C" fn on_exit(_id: qemu_plugin_id_t, _udata: *mut c_void) {
    let f = floor();
    let per_vcpu: Vec<u64> = f
        .counters
        .iter()
        .map(|c| c.0.load(Ordering::Relaxed))
        .collect();
    let total: u64 = per_vcpu.iter().sum();
    eprintln!(
        "floor: mode={} inline={} callbacks={total} vcpus={per_vcpu:?}",
        match f.mode {
            Mode::Mem => "mem",
            Mode::Exec => "exec",
        },
        f.inline.name(),
    );
    if f.inline != Inline::Off {
        let mut started = unsafe { qemu_plugin_u64_sum(f.icount) };
        if f.inline == Inline::Block {
            started -= unsafe { qemu_plugin_u64_sum(f.left) };
        }
        eprintln!("floor: icount={started}");
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
        assert_eq!(parse(&args(&[])), Ok((Mode::Mem, Inline::Off)));
        assert_eq!(
            parse(&args(&["mode=exec", "inline=on"])),
            Ok((Mode::Exec, Inline::Block))
        );
        assert_eq!(
            parse(&args(&["inline=insn"])),
            Ok((Mode::Mem, Inline::Insn))
        );
        assert_eq!(
            parse(&args(&["inline=padded"])),
            Ok((Mode::Mem, Inline::Padded))
        );
        assert!(parse(&args(&["mode=insn"])).is_err());
        assert!(parse(&args(&["inline"])).is_err());
    }
}
