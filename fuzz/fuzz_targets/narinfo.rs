#![no_main]
// Being written.
libfuzzer_sys::fuzz_target!(|_data: &[u8]| {});
