//! Replays every file of `corpus/<target>/` through its fuzz target on stable:
//! a corpus input that panics or fails a round trip fails `cargo test`, with
//! the file named. Crashes libFuzzer found are kept in the corpus once fixed.

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut replayed = 0;
    for (name, target) in roomcast_fuzz::TARGETS {
        let dir = root.join(name);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!files.is_empty(), "{name}: an empty corpus replays nothing");
        for path in files {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(
                outcome.is_ok(),
                "{name}: {} fails its target",
                path.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed >= roomcast_fuzz::TARGETS.len());
}

#[test]
fn every_target_has_a_corpus_and_a_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in roomcast_fuzz::TARGETS {
        assert!(root.join("corpus").join(name).is_dir(), "corpus/{name}");
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz_targets/{name}.rs"
        );
    }
}
