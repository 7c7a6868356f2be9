// Generates the Rust readers/builders for events.capnp with Debian's `capnp` compiler
// (package capnproto, installed by scripts/setup.sh).
fn main() {
    println!("cargo:rerun-if-changed=events.capnp");
    if let Err(e) = capnpc::CompilerCommand::new().file("events.capnp").run() {
        panic!(
            "could not compile schema/events.capnp: {e}\n\
             The Cap'n Proto compiler `capnp` is needed: run scripts/setup.sh (apt package capnproto)."
        );
    }
}
