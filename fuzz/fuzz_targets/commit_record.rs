//! Commit records come back from the progress topic, which anything may
//! write to: never a panic. The body is fuzzed too, behind a valid
//! checksum, or the fuzzer would only ever test the CRC check.
#![no_main]

use iotflow_dataflow::sealed::with_checksum;
use iotflow_sink::protocol::CommitRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = CommitRecord::decode(data);
    if let Ok(c) = CommitRecord::decode(&with_checksum(data.to_vec())) {
        // What decodes encodes again, and decodes to itself.
        let again = c.encode().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(CommitRecord::decode(&again).ok(), Some(c));
    }
});
