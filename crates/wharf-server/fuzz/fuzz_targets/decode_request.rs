//! Fuzzes the server's request decoding: HTTP publish/admin JSON bodies
//! (including base64 payloads and message ids) and every gRPC request
//! message through Wharf's codec. Run: `cargo +nightly fuzz run decode_request`
//! from `crates/wharf-server`; the seed corpus is replayed by a unit test.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wharf_server::fuzz_decode_http(data);
});
