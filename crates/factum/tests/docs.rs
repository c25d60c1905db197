//! The guide's Rust blocks, one after the other, are `examples/guide.rs`, which the test suite
//! compiles and whose tests it runs (`test = true`): so every block of the guide compiles as
//! written, with its `use` lines, and none can drift from the code.
#![allow(missing_docs)]

/// The Rust blocks of a Markdown text (fenced with ```` ```rust ````), in order.
fn rust_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_start().starts_with("```rust") => current = Some(Vec::new()),
            None => {}
            Some(_) if line.trim_start() == "```" => {
                blocks.push(current.take().unwrap_or_default().join("\n"));
            }
            Some(block) => block.push(line),
        }
    }
    assert!(current.is_none(), "a Rust block is not closed");
    blocks
}

#[test]
fn the_guides_rust_blocks_are_the_guide_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("../../docs/guide.md")).unwrap_or_default();
    let example = std::fs::read_to_string(root.join("examples/guide.rs")).unwrap_or_default();
    let blocks = rust_blocks(&guide);
    assert!(
        blocks.len() > 5,
        "docs/guide.md has {} Rust blocks",
        blocks.len()
    );
    let joined = blocks.join("\n\n") + "\n";
    if joined != example {
        let line = joined
            .lines()
            .zip(example.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| joined.lines().count().min(example.lines().count()));
        panic!(
            "docs/guide.md's Rust blocks differ from crates/factum/examples/guide.rs at line {}:\n  guide:   {:?}\n  example: {:?}",
            line + 1,
            joined.lines().nth(line),
            example.lines().nth(line)
        );
    }
}

#[test]
fn rust_blocks_are_read_in_order_and_other_fences_are_skipped() {
    let blocks = rust_blocks(
        "text\n```rust\nfn a() {}\n```\n```sh\nls\n```\n```rust,no_run\nfn b() {}\n```\n",
    );
    assert_eq!(blocks, vec!["fn a() {}".to_owned(), "fn b() {}".to_owned()]);
}
