//! A job file's input mapping (dotted paths, dimensions, a unit) over any
//! bytes: never a panic; a record is taken whole or refused whole; a refused
//! record's identity, when found, is a valid device and time.
#![no_main]

use std::sync::OnceLock;

use iotflow_dataflow::ParseLimits;
use iotflow_dataflow::reading::{Dims, InputMapping};
use libfuzzer_sys::fuzz_target;

fn mapping() -> &'static InputMapping {
    static MAPPING: OnceLock<InputMapping> = OnceLock::new();
    MAPPING.get_or_init(|| {
        let plan = iotflow_jobfile::parse(
            std::path::Path::new("fuzz.toml"),
            r#"name = "fuzz"
[input]
topic = "t"
device = "meta.id"
time = "at"
time_unit = "s"
seq = "n"
dimensions = ["site", "meta.line"]
metrics = ["temperature", "vibration"]
[[aggregation]]
name = "a"
group_by = ["site"]
window = "tumbling 1m"
topic = "a"
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        InputMapping::new(
            plan.input.mapping.clone(),
            plan.input.dimensions.iter().map(|d| d.path.clone()).collect(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let limits = ParseLimits::default();
    let (mut out, mut dims): (Vec<_>, Dims) = (Vec::new(), Vec::new());
    match mapping().parse(data, &limits, &mut out, &mut dims) {
        Ok(()) => assert!(!out.is_empty() && out.iter().all(|r| r.value.is_finite())),
        Err(_) => assert!(out.is_empty()),
    }
    if let Some(id) = mapping().identity(data, &limits) {
        assert!(!id.device_id.is_empty());
        assert!((limits.min_ts_ms..limits.max_ts_ms).contains(&id.ts_ms));
    }
});
