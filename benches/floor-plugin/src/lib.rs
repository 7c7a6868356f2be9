//! The floor: the cheapest QEMU TCG plugin that sees what the trace shim sees.
//!
//! `mode=mem` (default) registers a memory callback on every instruction, as
//! the shim does for `events=mem` and `events=mmio`; `mode=exec` registers an
//! exec callback on every instruction, the cheapest way a plugin sees every
//! executed instruction one by one. Either callback's body only increments a
//! per-vCPU counter, so what the guest pays is QEMU's own cost of calling a
//! plugin: any tracer built on these callbacks costs at least this much.
//!
//! `inline=on` also adds the per-instruction inline counter the shim uses for
//! icount (`qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu` on a
//! scoreboard of one u64 per vCPU, as the shim allocates it), to tell apart
//! the cost of that counter from the cost of the callbacks; `inline=padded`
//! the same with 128 bytes per vCPU in the scoreboard, so that the vCPUs'
//! counters do not share a cache line.
//!
//! At exit it prints one line on stderr:
//! `floor: mode=mem inline=off callbacks=N vcpus=[n0, n1, ...]`.
//!
//! `-plugin libbench_floor.so[,mode=mem|exec][,inline=on|off|padded]`

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

/// The inline per-instruction counter: none, as the shim has it (one u64
/// per vCPU, adjacent in QEMU's scoreboard), or padded to 128 bytes per vCPU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Inline {
    Off,
    On,
    Padded,
}

/// One vCPU's counter, alone on its cache line (the vCPU threads of MTTCG
/// must not share lines).
#[repr(align(128))]
struct Counter(AtomicU64);

struct Floor {
    mode: Mode,
    inline: Inline,
    counters: Box<[Counter]>,
    /// The inline per-instruction counter (`inline=on`).
    icount: qemu_plugin_u64,
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
            Some(("inline", "on")) => inline = Inline::On,
            Some(("inline", "padded")) => inline = Inline::Padded,
            _ => {
                return Err(format!(
                "unknown or malformed option {a:?} (expected mode=mem|exec, inline=on|off|padded)"
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
    let icount = if inline != Inline::Off {
        let size = if inline == Inline::Padded {
            128
        } else {
            std::mem::size_of::<u64>()
        };
        let score = unsafe { qemu_plugin_scoreboard_new(size) };
        qemu_plugin_u64 { score, offset: 0 }
    } else {
        qemu_plugin_u64 {
            score: std::ptr::null_mut(),
            offset: 0,
        }
    };
    let built = Box::new(Floor {
        mode,
        inline,
        counters,
        icount,
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
    for i in 0..n {
        let insn = unsafe { qemu_plugin_tb_get_insn(tb, i) };
        if f.inline != Inline::Off {
            unsafe {
                qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
                    insn,
                    qemu_plugin_op::QEMU_PLUGIN_INLINE_ADD_U64,
                    f.icount,
                    1,
                );
            }
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
        if f.inline != Inline::Off { "on" } else { "off" },
    );
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
            Ok((Mode::Exec, Inline::On))
        );
        assert_eq!(
            parse(&args(&["inline=padded"])),
            Ok((Mode::Mem, Inline::Padded))
        );
        assert!(parse(&args(&["mode=insn"])).is_err());
        assert!(parse(&args(&["inline"])).is_err());
    }
}
