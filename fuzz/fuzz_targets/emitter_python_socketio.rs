#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_fuzz::emitter_python_socketio(data));
