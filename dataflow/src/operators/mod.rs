//! The dataflow's operators, one per file.

mod alerts;
pub mod assign;
pub mod classify;
mod collect;
mod dedupe;
mod emit;
mod names;
pub mod windows;
