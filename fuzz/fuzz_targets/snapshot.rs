//! A worker snapshot read back from the state directory (a damaged disk, a
//! file of another version): never a panic, any size claimed inside it. The
//! body behind a valid checksum too.
#![no_main]

use iotflow_dataflow::sealed::with_checksum;
use iotflow_dataflow::snapshot::WorkerSnapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = WorkerSnapshot::decode(data);
    if let Ok(s) = WorkerSnapshot::decode(&with_checksum(data.to_vec())) {
        let again = s.encode().unwrap_or_else(|e| panic!("{e}"));
        let back = WorkerSnapshot::decode(&again).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.encode().ok(), Some(again));
    }
});
