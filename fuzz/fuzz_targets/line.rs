//! Fuzz target: `barge_proto::check::line_stream` (its properties are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| barge_proto::check::line_stream(data));
