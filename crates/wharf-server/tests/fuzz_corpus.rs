//! Replays the committed fuzz corpus (`fuzz/corpus/decode_request`) through
//! the same decoding the fuzz target exercises: nothing panics, valid seeds
//! decode and invalid ones are refused.

use std::path::Path;

#[test]
fn fuzz_corpus_decodes_without_panicking_and_classifies_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_request");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read seed");
        let accepted = wharf_server::fuzz_decode_http(&data);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.starts_with("valid-") {
            assert!(accepted > 0, "{name} was not decoded");
        }
        seen += 1;
    }
    assert!(seen >= 8, "corpus has only {seen} seeds");
}

#[test]
fn invalid_seeds_are_refused_by_the_decoders_they_target() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_request");
    for name in [
        "invalid-truncated.json",
        "invalid-bad-base64.json",
        "invalid-bad-id.json",
    ] {
        let data = std::fs::read(dir.join(name)).expect("read seed");
        assert_eq!(
            wharf_server::fuzz_decode_http(&data),
            0,
            "{name} was accepted"
        );
    }
}
