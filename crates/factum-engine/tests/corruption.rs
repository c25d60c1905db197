//! Damaged files: bit flips anywhere, truncation at random offsets, torn tails. Damage is
//! detected (open or `verify` fails naming a file and offset, or a torn tail is cut and
//! reported) and never served: every event a read returns is the one that was written.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use factum_core::{
    Direction, EventStore, ExpectedState, NewEvent, RecordedEvent, StoreError, StreamName,
};
use factum_engine::{Engine, EngineOptions};
use rand::Rng;

fn options() -> EngineOptions {
    EngineOptions {
        segment_bytes_limit: 8 * 1024,
        index_save_interval_events: 1_000_000,
    }
}

const STREAMS: u64 = 6;

async fn template() -> (tempfile::TempDir, Vec<RecordedEvent>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Engine::open(dir.path(), options()).unwrap();
    for k in 0..120u64 {
        let stream = StreamName::user(format!("c-{}", k % STREAMS)).unwrap();
        let events = (0..1 + k % 3)
            .map(|i| {
                NewEvent::json(
                    "Written",
                    &serde_json::json!({"k": k, "i": i, "pad": "z".repeat((k * 7 % 90) as usize)}),
                )
                .unwrap()
            })
            .collect();
        store
            .append(&stream, ExpectedState::Any, events)
            .await
            .unwrap();
    }
    let all = store
        .read_all(0, Direction::Forwards, usize::MAX)
        .await
        .unwrap();
    store.close().unwrap();
    (dir, all)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Reads everything a user could ask for; every event must be the original, or the read
/// must fail as corrupted.
async fn nothing_wrong_is_served(store: &Engine, original: &[RecordedEvent]) {
    let mut from = 0u64;
    while (from as usize) < original.len() {
        match store.read_all(from, Direction::Forwards, 16).await {
            Ok(events) => {
                for event in &events {
                    assert_eq!(
                        event, &original[event.position as usize],
                        "served a damaged event"
                    );
                }
            }
            Err(StoreError::Corrupted { .. }) => {}
            Err(other) => panic!("unexpected error {other}"),
        }
        from += 16;
    }
    for s in 0..STREAMS {
        let stream = StreamName::user(format!("c-{s}")).unwrap();
        match store
            .read_stream(&stream, 0, Direction::Forwards, usize::MAX)
            .await
        {
            Ok(events) => {
                for event in &events {
                    assert_eq!(
                        event, &original[event.position as usize],
                        "served a damaged event"
                    );
                }
            }
            Err(StoreError::Corrupted { .. }) => {}
            Err(other) => panic!("unexpected error {other}"),
        }
    }
}

/// The log holds the original's first events, every one intact.
async fn assert_a_prefix_is_kept(store: &Engine, original: &[RecordedEvent]) {
    let kept = store
        .read_all(0, Direction::Forwards, usize::MAX)
        .await
        .unwrap();
    assert_eq!(kept[..], original[..kept.len()]);
}

enum Damage {
    FlipBit,
    Truncate,
}

async fn damage_rounds(damage: Damage, keep_index: bool, rounds: usize) {
    let (template, original) = template().await;
    let mut detected_at_open = 0;
    let mut detected_by_verify = 0;
    let mut cut = 0;
    for _ in 0..rounds {
        let work = tempfile::tempdir().unwrap();
        copy_dir(template.path(), work.path());
        if !keep_index {
            std::fs::remove_file(work.path().join("index.fidx")).unwrap();
        }
        let files = segment_files(work.path());
        let mut rng = rand::rng();
        let file = &files[rng.random_range(0..files.len())];
        let mut bytes = std::fs::read(file).unwrap();
        let offset = rng.random_range(0..bytes.len());
        let is_last = file == files.last().unwrap();
        match damage {
            Damage::FlipBit => bytes[offset] ^= 1 << rng.random_range(0..8),
            Damage::Truncate => bytes.truncate(offset),
        }
        std::fs::write(file, &bytes).unwrap();

        let store = match Engine::open(work.path(), options()) {
            Err(StoreError::Corrupted { file, reason, .. }) => {
                assert!(
                    file.starts_with(work.path()),
                    "names the file: {}",
                    file.display()
                );
                assert!(!reason.is_empty());
                detected_at_open += 1;
                continue;
            }
            Err(other) => panic!("unexpected error at open: {other}"),
            Ok(store) => store,
        };
        nothing_wrong_is_served(&store, &original).await;
        let report = store.open_report();
        if report.cut_bytes > 0 || report.removed_segments > 0 {
            // Without a saved index, damage in the last frame of the last segment (or a last
            // segment cut below its header) looks like an interrupted write: it is cut off,
            // reported, and the rest is intact.
            assert!(
                !keep_index && is_last,
                "a tail may be cut only where nothing vouches for it"
            );
            assert_a_prefix_is_kept(&store, &original).await;
            cut += 1;
            continue;
        }
        match store.verify(|_, _| {}) {
            Err(StoreError::Corrupted { .. }) => detected_by_verify += 1,
            Err(other) => panic!("unexpected verify error {other}"),
            // The last segment cut exactly between two frames, with no saved index: nothing
            // records that more was written, so the log reads as a shorter one — the original's
            // first events, every one intact.
            Ok(_) if !keep_index && is_last && store.head() < original.len() as u64 => {
                assert_a_prefix_is_kept(&store, &original).await;
                cut += 1;
            }
            // Every byte of the template belongs to an acknowledged event: damage must be found.
            Ok(_) => panic!("damage at {}:{offset} went undetected", file.display()),
        }
    }
    println!(
        "{rounds} rounds: {detected_at_open} at open, {detected_by_verify} by verify, {cut} tails cut"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_bits_are_detected_and_never_served() {
    damage_rounds(Damage::FlipBit, true, 60).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_bits_without_a_saved_index_are_detected_and_never_served() {
    damage_rounds(Damage::FlipBit, false, 60).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_files_are_detected_and_never_served() {
    damage_rounds(Damage::Truncate, true, 40).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_files_without_a_saved_index_are_detected_and_never_served() {
    damage_rounds(Damage::Truncate, false, 40).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torn_tail_is_cut_off_and_appends_continue() {
    let (template, original) = template().await;
    let stream = StreamName::user("c-0").unwrap();
    for keep_index in [true, false] {
        for cut_into in [1u64, 30, 100] {
            let work = tempfile::tempdir().unwrap();
            copy_dir(template.path(), work.path());
            let saved_index = std::fs::read(work.path().join("index.fidx")).unwrap();
            // One more append whose write the "crash" interrupts.
            let store = Engine::open(work.path(), options()).unwrap();
            let big = NewEvent::json("Torn", &"t".repeat(200)).unwrap();
            store
                .append(&stream, ExpectedState::Any, vec![big])
                .await
                .unwrap();
            store.close().unwrap();
            drop(store);
            let last = segment_files(work.path()).pop().unwrap();
            let full_len = std::fs::metadata(&last).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&last)
                .unwrap()
                .set_len(full_len - cut_into)
                .unwrap();
            // The index on disk is the one saved before the interrupted append, or none.
            if keep_index {
                std::fs::write(work.path().join("index.fidx"), &saved_index).unwrap();
            } else {
                std::fs::remove_file(work.path().join("index.fidx")).unwrap();
            }

            let store = Engine::open(work.path(), options()).unwrap();
            let cut = store.open_report().cut_bytes;
            assert!(cut > 0 && cut < full_len, "cut {cut}");
            assert_eq!(
                std::fs::metadata(&last).unwrap().len(),
                full_len - cut_into - cut
            );
            let all = store
                .read_all(0, Direction::Forwards, usize::MAX)
                .await
                .unwrap();
            assert_eq!(
                all, original,
                "the torn append is gone whole, the rest intact"
            );
            let r = store
                .append(
                    &stream,
                    ExpectedState::Any,
                    vec![NewEvent::json("After", &1).unwrap()],
                )
                .await
                .unwrap();
            assert_eq!(r.position, original.len() as u64);
            store.verify(|_, _| {}).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn damage_before_a_valid_frame_is_corruption_not_a_torn_tail() {
    let (template, _) = template().await;
    let work = tempfile::tempdir().unwrap();
    copy_dir(template.path(), work.path());
    std::fs::remove_file(work.path().join("index.fidx")).unwrap();
    let last = segment_files(work.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    // The first frame's magic: a valid frame follows, so this cannot be a torn tail.
    bytes[32] ^= 0xff;
    std::fs::write(&last, &bytes).unwrap();
    match Engine::open(work.path(), options()) {
        Err(StoreError::Corrupted { file, offset, .. }) => {
            assert_eq!(file, last);
            assert_eq!(offset, 32);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("corruption went unnoticed"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_last_segment_cut_below_its_header_is_removed_and_reported_or_refused() {
    let (template, original) = template().await;
    for keep_index in [false, true] {
        let work = tempfile::tempdir().unwrap();
        copy_dir(template.path(), work.path());
        if !keep_index {
            std::fs::remove_file(work.path().join("index.fidx")).unwrap();
        }
        let last = segment_files(work.path()).pop().unwrap();
        let bytes = std::fs::read(&last).unwrap();
        std::fs::write(&last, &bytes[..10]).unwrap();
        match Engine::open(work.path(), options()) {
            // A saved index vouches for the segment: its loss is corruption.
            Err(StoreError::Corrupted { .. }) if keep_index => {}
            Ok(store) if !keep_index => {
                assert_eq!(store.open_report().removed_segments, 1);
                let kept = store
                    .read_all(0, Direction::Forwards, usize::MAX)
                    .await
                    .unwrap();
                assert!(kept.len() < original.len());
                assert_eq!(kept[..], original[..kept.len()]);
                store.verify(|_, _| {}).unwrap();
            }
            Err(e) => panic!("keep_index={keep_index}: unexpected error {e}"),
            Ok(_) => panic!("keep_index={keep_index}: the lost segment went unnoticed"),
        }
    }
}
