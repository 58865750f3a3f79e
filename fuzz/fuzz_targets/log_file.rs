#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| citychain::fuzz::log_file(data));
