//! The policy parser, validator and compiler never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match chokepoint_agent::policy::compile_source("fuzz.yaml", data) {
        Ok(p) => {
            assert!(!p.identities.is_empty());
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            let _ = e.to_string();
        }
    }
});
