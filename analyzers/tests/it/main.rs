//! Integration tests of trace_analyzers on synthetic captures.

mod common;

mod analyzers;
mod cli;
mod errors;
mod perfetto;
mod sql;
