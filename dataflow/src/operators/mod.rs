//! The dataflow's operators, one per file.

pub mod assign;
pub mod classify;
mod dedupe;
mod names;
pub mod windows;
