//! A chain of snapshots (a whole one, then deltas) as recovery materializes
//! it, each link any decodable bytes: an error or a snapshot, never a panic.
#![no_main]

use iotflow_dataflow::aggregation::Aggregation;
use iotflow_dataflow::job::EmitMode;
use iotflow_dataflow::sealed::with_checksum;
use iotflow_dataflow::snapshot::{WindowRules, WorkerSnapshot, materialize};
use iotflow_dataflow::window::WindowSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Links separated by 0xFF 0xFE (rare in bincode, easy for the fuzzer to write).
    let chain: Vec<WorkerSnapshot> = data
        .split(|b| *b == 0xFE)
        .filter_map(|part| WorkerSnapshot::decode(&with_checksum(part.to_vec())).ok())
        .collect();
    let Ok(tumbling) = WindowSpec::tumbling(10_000) else { return };
    let per_device = Aggregation::per_device("a", tumbling, EmitMode::Final);
    let rules = WindowRules {
        aggregations: vec![per_device].into(),
        lateness_ms: 0,
    };
    let _ = materialize(chain, &rules);
});
