#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| citychain::fuzz::federation(data));
