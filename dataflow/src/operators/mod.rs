//! The dataflow's operators, one per file.

pub mod classify;
pub mod windows;
