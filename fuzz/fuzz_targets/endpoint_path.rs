#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_fuzz::endpoint_path(data));
