//! The local API's request decoder never panics, and what it accepts re-encodes to itself.
#![no_main]

use chokepoint_agent::api::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode(data) {
        let line = encode(&req);
        let again = decode(line.trim_ascii_end()).expect("re-encoded request decodes");
        assert_eq!(again, req);
    }
});
