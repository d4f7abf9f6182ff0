//! A pending-rows segment read back by recovery: frames of (length, CRC'd
//! bincode, plain or packed with LZ4). Fuzzed twice: as raw bytes, and as bodies the fuzzer chose
//! framed with valid lengths and checksums. Never a panic.
#![no_main]

use iotflow_dataflow::sealed::with_checksum;
use iotflow_sink::exactly_once::pending::decode_segment;
use iotflow_sink::protocol::PendingEntry;
use libfuzzer_sys::fuzz_target;

fn entry(path: &str, bytes: usize) -> PendingEntry {
    PendingEntry {
        dataset: "aggregates".into(),
        worker: 0,
        since: 1,
        rows: 1,
        path: path.into(),
        bytes: bytes as u64,
    }
}

fuzz_target!(|data: &[u8]| {
    for path in ["w0000-e1.frames", "w0000-e1.rows"] {
        let _ = decode_segment(data, &entry(path, data.len()));
        let mut framed = Vec::new();
        for body in data.split(|b| *b == 0xFE) {
            let body = with_checksum(body.to_vec());
            framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
            framed.extend_from_slice(&body);
        }
        let _ = decode_segment(&framed, &entry(path, framed.len()));
    }
});
