//! ARCHITECTURE.md stays true to the tree: every path it names exists, and its code map names
//! every crate and every file of the server.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn architecture() -> String {
    fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md is readable")
}

/// The code map's entries as paths from the root: an indented name is inside the nearest
/// less indented one above it.
fn code_map(doc: &str) -> Vec<String> {
    let section = doc
        .split("## Code map")
        .nth(1)
        .expect("ARCHITECTURE.md has a code map");
    let block = section
        .split("```")
        .nth(1)
        .expect("the code map is a code block");
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut paths = Vec::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let indent = line.len() - line.trim_start().len();
        let name = line.split_whitespace().next().expect("a non-empty line");
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let path = match stack.last() {
            Some((_, parent)) => format!("{}/{}", parent.trim_end_matches('/'), name),
            None => name.to_owned(),
        };
        paths.push(path.trim_end_matches('/').to_owned());
        stack.push((indent, path));
    }
    paths
}

/// Backticked names in the text that look like paths (`a/b.rs`, `docs/cluster/`; not URL
/// paths such as `/readyz`).
fn named_paths(doc: &str) -> Vec<String> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| {
            t.contains('/')
                && !t.starts_with('/')
                && !t.contains("://")
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        })
        .map(|t| t.trim_end_matches('/').to_owned())
        .collect()
}

/// A named path exists from the root, or (a short form) inside the server's sources or tests.
fn exists(path: &str) -> bool {
    ["", "crates/server/src", "crates/server/tests"]
        .iter()
        .any(|base| root().join(base).join(path).exists())
}

#[test]
fn every_path_in_the_code_map_exists() {
    let missing: Vec<String> = code_map(&architecture())
        .into_iter()
        .filter(|p| !root().join(p).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map names paths that do not exist: {missing:?}"
    );
}

#[test]
fn every_path_named_in_the_text_exists() {
    let missing: Vec<String> = named_paths(&architecture())
        .into_iter()
        .filter(|p| !exists(p))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn the_code_map_names_every_crate_and_every_server_file() {
    let mapped: BTreeSet<String> = code_map(&architecture()).into_iter().collect();
    let mut wanted = Vec::new();
    for entry in fs::read_dir(root().join("crates")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            wanted.push(format!("crates/{}", entry.file_name().to_string_lossy()));
        }
    }
    collect_sources(&root(), "crates/server/src", &mut wanted);
    let unmapped: Vec<&String> = wanted.iter().filter(|p| !mapped.contains(*p)).collect();
    assert!(
        unmapped.is_empty(),
        "ARCHITECTURE.md's code map does not name: {unmapped:?}"
    );
}

/// Every directory and source file under `dir`, but unit-test modules (`tests.rs`).
fn collect_sources(root: &Path, dir: &str, out: &mut Vec<String>) {
    for entry in fs::read_dir(root.join(dir)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{dir}/{name}");
        if entry.file_type().unwrap().is_dir() {
            out.push(path.clone());
            collect_sources(root, &path, out);
        } else if name.ends_with(".rs") && name != "tests.rs" {
            out.push(path);
        }
    }
}

#[test]
fn the_code_map_reader_follows_indentation() {
    let doc = "## Code map\n\n```\na/          x\n  b.rs      y\n  c/        z\n    d.rs    w\ne.md        v\n```\n";
    assert_eq!(
        code_map(doc),
        vec!["a", "a/b.rs", "a/c", "a/c/d.rs", "e.md"]
    );
    assert_eq!(
        named_paths("see `a/b.rs`, `x::y`, `http://h/p`, `/readyz` and `docs/`"),
        vec!["a/b.rs", "docs"]
    );
}
