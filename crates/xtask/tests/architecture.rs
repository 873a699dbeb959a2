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

/// The server's modules import one another without a cycle: data flows one way through the
/// design's boxes. Counted are `crate::<module>` paths between top-level modules and
/// `super::<module>` paths between files of one folder; doc comments and unit tests are not.
#[test]
fn the_servers_modules_import_without_a_cycle() {
    let mut files = Vec::new();
    collect_sources(&root(), "crates/server/src", &mut files);
    let key = |path: &str| -> String {
        let rel = path
            .trim_start_matches("crates/server/src/")
            .trim_end_matches(".rs");
        rel.trim_end_matches("/mod").to_owned()
    };
    let keys: BTreeSet<String> = files
        .iter()
        .filter(|p| p.ends_with(".rs"))
        .map(|p| key(p))
        .collect();
    let mut edges: Vec<(String, String)> = Vec::new();
    for path in files.iter().filter(|p| p.ends_with(".rs")) {
        let from = key(path);
        let top = from.split('/').next().unwrap().to_owned();
        let folder = from.rsplit_once('/').map(|(f, _)| f.to_owned());
        let text = fs::read_to_string(root().join(path)).unwrap();
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for target in referenced(&code, "crate::") {
            if target != top && keys.contains(&target) {
                edges.push((top.clone(), target));
            }
        }
        // `super::` in a folder's mod.rs is the crate's root, not a sibling.
        if let Some(folder) = folder.filter(|_| !path.ends_with("/mod.rs")) {
            for target in referenced(&code, "super::") {
                let sibling = format!("{folder}/{target}");
                if sibling != from && keys.contains(&sibling) {
                    edges.push((from.clone(), sibling));
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        panic!(
            "the server's modules import in a cycle: {}",
            cycle.join(" -> ")
        );
    }
}

/// The module names that follow `prefix` in `code`: `prefix::a::…` and `prefix::{a, b::c}`.
fn referenced(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        let names: Vec<&str> = if let Some(list) = rest.strip_prefix('{') {
            let list = &list[..list.find('}').unwrap_or(list.len())];
            list.split(',').map(|n| n.trim()).collect()
        } else {
            vec![rest]
        };
        for name in names {
            let ident: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if ident.starts_with(|c: char| c.is_ascii_lowercase()) {
                out.push(ident);
            }
        }
    }
    out
}

/// A cycle in the directed graph `edges`, if there is one.
fn find_cycle(edges: &[(String, String)]) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &[(String, String)],
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for (_, to) in edges.iter().filter(|(from, _)| from == node) {
            if let Some(cycle) = visit(to, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .iter()
        .find_map(|(from, _)| visit(from, edges, &mut Vec::new(), &mut done))
}

#[test]
fn a_cycle_is_found_and_a_chain_is_not() {
    let edge = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(find_cycle(&[edge("a", "b"), edge("b", "c")]), None);
    assert_eq!(
        find_cycle(&[edge("a", "b"), edge("b", "c"), edge("c", "a")]),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        referenced(
            "use crate::{store::X, sync};\nuse super::hub::Hub; crate::Error",
            "crate::"
        ),
        vec!["store", "sync"]
    );
}
