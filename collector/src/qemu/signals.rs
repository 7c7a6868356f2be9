//! SIGINT and SIGTERM: counted, not acted on, in the handler. The capture
//! loop reads the count and ends (or, for `run`, first asks QEMU to exit).

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static SIGNALS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic add.
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// Installs the handlers; returns the counter they increment, from 0.
pub fn install() -> Result<&'static AtomicU32> {
    SIGNALS.store(0, Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // Safety: the handler only touches an atomic.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("cannot handle {sig}"))?;
    }
    Ok(&SIGNALS)
}
