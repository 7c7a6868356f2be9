//! Text logging as users run it today: QEMU's contrib `execlog` plugin
//! (contrib/plugins/execlog.c), which Debian does not ship, redone in Rust
//! with the same callbacks and the same lines, written to a file.
//!
//! One line per executed instruction:
//!
//! ```text
//! 0, 0xffff800008000000, 0xd503201f, "nop"
//! 1, 0x40001000, 0xb9400021, "ldr w1, [x1]", load, 0x40001000, RAM
//! ```
//!
//! `cpu, 0xpc, 0xopcode, "disas"`, then for each memory access of the
//! instruction `, load|store, 0x%08paddr, device` (`, 0x%08vaddr` when QEMU
//! gives no physical address). As in execlog: the text `0xpc, 0xopcode,
//! "disas"` is made once per translated instruction; an exec callback on
//! every instruction writes out the vCPU's previous line and starts the new
//! one, a memory callback on every instruction appends each access; the last
//! line of each vCPU is written at exit. The opcode is the instruction's first
//! (up to) 4 bytes read as a little-endian u32, like execlog's
//! `qemu_plugin_insn_data(insn, &opcode, 4)` on a little-endian host.
//!
//! Where execlog writes with `qemu_plugin_outs` (QEMU's log, under its lock),
//! this writes each line under one mutex into a 1 MiB buffered file: the same
//! serialisation of all vCPUs into one ordered log, with fewer system calls,
//! so if anything this is faster than execlog.
//!
//! At exit it prints `textlog: lines=N bytes=M` on stderr.
//!
//! `-plugin libbench_textlog.so,out=PATH`

use qemu_plugin_sys::*;
use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

#[no_mangle]
pub static qemu_plugin_version: c_int = QEMU_PLUGIN_VERSION as c_int;

/// The line a vCPU is building (execlog's `last_exec`). Only that vCPU's
/// thread touches it (one thread per vCPU under MTTCG, one for all under
/// round-robin TCG; the exit callback runs after the vCPUs stopped).
#[repr(align(128))]
struct LastExec(UnsafeCell<String>);

struct TextLog {
    last_exec: Box<[LastExec]>,
    out: Mutex<Out>,
}

/// The log file and what went into it (reported at exit: with `out=/dev/null`
/// the size the log would have had).
struct Out {
    file: BufWriter<File>,
    lines: u64,
    bytes: u64,
}

// Safety: `out` is a Mutex, and each `last_exec` line is only touched by its
// own vCPU's thread (see `LastExec`), so sharing a `TextLog` between vCPU
// threads never shares a `String`.
unsafe impl Sync for TextLog {}
// Safety: every field is `Send` already (`UnsafeCell<String>`, `Mutex<Out>`);
// this only restates the auto trait.
unsafe impl Send for TextLog {}

static LOG: AtomicPtr<TextLog> = AtomicPtr::new(std::ptr::null_mut());

#[inline(always)]
fn log() -> &'static TextLog {
    // Relaxed: stored before any callback is registered.
    // Safety: only our callbacks call this, and `qemu_plugin_install` stores
    // `LOG` (a leaked Box, never freed) before it registers any of them.
    unsafe { &*LOG.load(Ordering::Relaxed) }
}

impl TextLog {
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    fn line(&self, vcpu: c_uint) -> &mut String {
        // Safety: called only on `vcpu`'s own thread (or by `on_exit`, after
        // the vCPUs stopped), at most once per line per callback, which drops
        // the `&mut` before returning: no other reference to it is live.
        unsafe { &mut *self.last_exec[vcpu as usize].0.get() }
    }

    /// `qemu_plugin_outs(line); qemu_plugin_outs("\n");`
    fn write_line(&self, line: &str) {
        let mut out = self.out.lock().unwrap();
        let _ = out.file.write_all(line.as_bytes());
        let _ = out.file.write_all(b"\n");
        out.lines += 1;
        out.bytes += line.len() as u64 + 1;
    }
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
    let mut out_path = None;
    for a in &args {
        match a.split_once('=') {
            Some(("out", p)) if !p.is_empty() => out_path = Some(p.to_string()),
            _ => {
                eprintln!("textlog plugin: unknown or malformed option {a:?} (expected out=PATH)");
                return -1;
            }
        }
    }
    let Some(out_path) = out_path else {
        eprintln!("textlog plugin: out=PATH is required");
        return -1;
    };
    let file = match File::create(&out_path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("textlog plugin: cannot create {out_path}: {e}");
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
        256
    };
    let built = Box::new(TextLog {
        last_exec: (0..n_vcpus)
            .map(|_| LastExec(UnsafeCell::new(String::with_capacity(256))))
            .collect(),
        out: Mutex::new(Out {
            file: BufWriter::with_capacity(1 << 20, file),
            lines: 0,
            bytes: 0,
        }),
    });
    LOG.store(Box::into_raw(built), Ordering::Release);
    // Safety: `id` is QEMU's for this install; `LOG` is stored above, as the
    // callbacks' `log()` needs; `on_exit` ignores its null `udata`.
    unsafe {
        qemu_plugin_register_vcpu_tb_trans_cb(id, Some(on_translate));
        qemu_plugin_register_atexit_cb(id, Some(on_exit), std::ptr::null_mut());
    }
    0
}

/// Per translated instruction: its text, made once and never freed (QEMU may
/// run the block until it exits), and the two callbacks.
///
/// # Safety
/// Called by QEMU only, as the translation callback, with a `tb` valid for
/// the call.
unsafe extern "C" fn on_translate(_id: qemu_plugin_id_t, tb: *mut qemu_plugin_tb) {
    // Safety: `tb` is valid during this translation callback.
    let n = unsafe { qemu_plugin_tb_n_insns(tb) };
    for i in 0..n {
        // Safety: `tb` is valid for this callback and `i` < its `n` instructions.
        let insn = unsafe { qemu_plugin_tb_get_insn(tb, i) };
        // Safety: `insn` is `tb`'s, valid during its translation.
        let vaddr = unsafe { qemu_plugin_insn_vaddr(insn) };
        let mut bytes = [0u8; 4];
        // Safety: as above; QEMU copies at most `bytes.len()` bytes into the
        // writable `bytes`.
        unsafe { qemu_plugin_insn_data(insn, bytes.as_mut_ptr() as *mut c_void, bytes.len()) };
        let opcode = u32::from_le_bytes(bytes);
        // Safety: `insn` is `tb`'s, valid during its translation.
        let disas_ptr = unsafe { qemu_plugin_insn_disas(insn) };
        let disas = if disas_ptr.is_null() {
            String::new()
        } else {
            // Safety: non-null (checked): a C string QEMU allocated for us,
            // copied out here before it is freed below.
            let s = unsafe { CStr::from_ptr(disas_ptr) }
                .to_string_lossy()
                .into_owned();
            // g_strdup'ed by QEMU; g_free is free.
            // Safety: so `free` may release it; ours to free, once, and not
            // used after.
            unsafe { libc_free(disas_ptr as *mut c_void) };
            s
        };
        // A C string, as execlog's udata is (disassembly has no NUL).
        let text = format!("0x{vaddr:x}, 0x{opcode:x}, \"{disas}\"").replace('\0', "");
        let udata = std::ffi::CString::new(text).unwrap().into_raw();
        // Safety: `insn` is `tb`'s, during its translation; `udata` is leaked
        // (never freed), so it outlives every `on_insn_exec` call that gets it;
        // `on_memory_access` ignores its null `udata`.
        unsafe {
            qemu_plugin_register_vcpu_mem_cb(
                insn,
                Some(on_memory_access),
                qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                qemu_plugin_mem_rw::QEMU_PLUGIN_MEM_RW,
                std::ptr::null_mut(),
            );
            qemu_plugin_register_vcpu_insn_exec_cb(
                insn,
                Some(on_insn_exec),
                qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                udata as *mut c_void,
            );
        }
    }
}

extern "C" {
    /// C's `free`.
    ///
    /// # Safety
    /// `p` must come from `malloc` (or GLib's allocator, which uses it) and
    /// not be used or freed again.
    #[link_name = "free"]
    fn libc_free(p: *mut c_void);
}

/// execlog's `vcpu_insn_exec`: write the vCPU's previous line, start its new one.
///
/// # Safety
/// Called by QEMU only, on vCPU `vcpu`'s thread, with the `udata`
/// `on_translate` registered for the instruction.
unsafe extern "C" fn on_insn_exec(vcpu: c_uint, udata: *mut c_void) {
    let log = log();
    let line = log.line(vcpu);
    if !line.is_empty() {
        log.write_line(line);
    }
    line.clear();
    let _ = write!(line, "{vcpu}, ");
    // Safety: `udata` is the `CString` `on_translate` leaked for this
    // instruction: NUL-terminated and never freed.
    let text = unsafe { CStr::from_ptr(udata as *const c_char) }.to_bytes();
    // Safety: made from a String at translation (less its NULs): valid UTF-8.
    line.push_str(unsafe { std::str::from_utf8_unchecked(text) });
}

/// execlog's `vcpu_mem`: append the access to the vCPU's line.
///
/// # Safety
/// Called by QEMU only, on vCPU `vcpu`'s thread, with this access's `info`
/// and `vaddr`.
unsafe extern "C" fn on_memory_access(
    vcpu: c_uint,
    info: qemu_plugin_meminfo_t,
    vaddr: u64,
    _udata: *mut c_void,
) {
    let line = log().line(vcpu);
    // Safety: `info` is this memory callback's, as QEMU passed it.
    if unsafe { qemu_plugin_mem_is_store(info) } {
        line.push_str(", store");
    } else {
        line.push_str(", load");
    }
    // Safety: `info` and `vaddr` are what QEMU passed this memory callback.
    let hwaddr = unsafe { qemu_plugin_get_hwaddr(info, vaddr) };
    if !hwaddr.is_null() {
        // Safety: a non-null hwaddr of this callback's access, valid until it
        // returns.
        let addr = unsafe { qemu_plugin_hwaddr_phys_addr(hwaddr) };
        // Safety: as above.
        let name = unsafe { qemu_plugin_hwaddr_device_name(hwaddr) };
        let name = if name.is_null() {
            std::borrow::Cow::Borrowed("(null)")
        } else {
            // Safety: non-null (checked): QEMU's interned, NUL-terminated
            // device name, never freed.
            unsafe { CStr::from_ptr(name) }.to_string_lossy()
        };
        let _ = write!(line, ", 0x{addr:08x}, {name}");
    } else {
        let _ = write!(line, ", 0x{vaddr:08x}");
    }
}

/// execlog's `plugin_exit`: each vCPU's last line.
///
/// # Safety
/// Called by QEMU only, at exit, after the vCPUs stopped (see `LastExec`).
unsafe extern "C" fn on_exit(_id: qemu_plugin_id_t, _udata: *mut c_void) {
    let log = log();
    for v in 0..log.last_exec.len() {
        let line = log.line(v as c_uint);
        if !line.is_empty() {
            log.write_line(line);
            line.clear();
        }
    }
    let mut out = log.out.lock().unwrap();
    let _ = out.file.flush();
    eprintln!("textlog: lines={} bytes={}", out.lines, out.bytes);
}
