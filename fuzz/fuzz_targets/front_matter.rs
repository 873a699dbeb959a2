//! The docs tool's front-matter reader (`crates/xtask/src/frontmatter.rs`), and the index it
//! renders from a guide or a category whose file is the input.
//!
//! Properties: no input panics; fields read from front matter, written back as front matter,
//! read as the same fields (when they are fields the tool can use: string names, no YAML tags;
//! the YAML writer cannot write every tag or non-scalar key the reader takes, and the tool
//! reports those as errors anyway); a guide that passes every check and is not a draft is in
//! the rendered index.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xtask::fuzzing::serde_norway::{self, Value};
use xtask::fuzzing::{front_matter, render_one};

const CATEGORY: &str = "---\ntitle: Operations\ndescription: Running it.\norder: 1\n---\n";
/// Its `image` is a file of the fuzz crate, which is the root the guide is checked against.
const GUIDE: &str = "---\ntitle: Fuzzing\ndescription: How.\nimage: Cargo.toml\n\
                     createdAt: 2024-02-29\ndraft: false\ncategories:\n  - ops\ntags: []\n---\n";

fuzz_target!(|data: &[u8]| {
    // `cargo xtask readme` reads each file with `read_to_string`: it is UTF-8 or refused.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Ok(map) = front_matter(text) else {
        let _ = render_one(root, ("ops", text), ("guide", GUIDE));
        return;
    };
    if map
        .iter()
        .all(|(k, v)| matches!(k, Value::String(_)) && untagged(v))
    {
        let yaml = serde_norway::to_string(&map).expect("fields that were read serialise");
        let again = format!("---\n{yaml}---\n");
        match front_matter(&again) {
            Ok(back) => assert_eq!(back, map, "{again:?} reads as other fields"),
            Err(p) => panic!("{again:?} does not read back: {p}"),
        }
    }
    if let Ok(index) = render_one(root, ("ops", CATEGORY), ("guide", text)) {
        let draft = map.get("draft") == Some(&Value::Bool(true));
        assert_eq!(
            index.contains("](docs/guides/guide.md)"),
            !draft,
            "a checked guide is listed unless it is a draft: {index}"
        );
    }
    let _ = render_one(root, ("ops", text), ("guide", GUIDE));
});

/// No tag and no list or mapping as a key, at any depth: what the YAML writer can write.
fn untagged(v: &Value) -> bool {
    match v {
        Value::Tagged(_) => false,
        Value::Sequence(items) => items.iter().all(untagged),
        Value::Mapping(m) => m.iter().all(|(k, v)| {
            !matches!(k, Value::Sequence(_) | Value::Mapping(_)) && untagged(k) && untagged(v)
        }),
        _ => true,
    }
}
