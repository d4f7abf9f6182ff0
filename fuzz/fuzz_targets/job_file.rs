//! Job files are written by people: any text gives a plan or an error with a
//! place in the file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = iotflow_jobfile::parse(std::path::Path::new("fuzz.toml"), text) {
        // Rendering the error (with its source line) must not panic either.
        let _ = e.to_string();
    }
});
