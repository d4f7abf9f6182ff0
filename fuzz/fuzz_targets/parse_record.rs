//! The parser takes whatever bytes arrive on a topic: it must never panic, and
//! it must accept a record whole or reject it whole.
#![no_main]

use iotflow_dataflow::{ParseLimits, parse_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    match parse_record(data, &ParseLimits::default(), &mut out) {
        Ok(()) => assert!(!out.is_empty() && out.iter().all(|r| r.value.is_finite())),
        Err(_) => assert!(out.is_empty()),
    }
});
