//! One capture: the session that drains until the capture ends, the
//! directory it writes (capture.json), and continuing a capture
//! (`--append`).

pub mod append;
pub mod directory;
pub mod session;
