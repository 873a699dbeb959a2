//! confab's repository chores, run as `cargo xtask …` (the alias lives in `.cargo/config.toml`).
//!
//! The one chore so far, `cargo xtask readme [--check] [--base-url URL] [--root DIR]`, writes the
//! guide index in `README.md` from the Markdown files under `docs/`, so that a new guide shows up
//! in the README by itself, in the order the published site shows it. Nobody edits the index by
//! hand.
//!
//! - `--check` writes nothing and exits 1 if the README's index differs from what would be
//!   generated, naming the first differing line (for CI); 0 when they are equal.
//! - `--base-url URL` links to the published site instead of the Markdown files (see *Links*).
//! - `--root DIR` is the repository root; by default, the workspace this tool was built from, so
//!   that `cargo xtask readme` works from any folder of it.
//!
//! Problems with the docs or the README exit 1, with nothing written; usage errors exit 2.
//!
//! # Where the index goes
//!
//! Between two lines of `README.md` that are exactly [`START_MARKER`] (`<!-- guides:start -->`)
//! and [`END_MARKER`] (`<!-- guides:end -->`). Everything outside them, the marker lines
//! included, is left byte-for-byte as it is. The output has no timestamp and depends only on the
//! files, so a second run changes nothing.
//!
//! # Categories: `docs/categories/<slug>.md`
//!
//! ```text
//! ---
//! title: Architecture
//! description: How a message travels through confab.
//! order: 2
//! ---
//! One paragraph saying what the category covers.
//! ```
//!
//! All three fields are required; `order` is an integer. Two categories may **not** share an
//! `order`: that is reported as an error rather than broken by slug, because a silent tie-break
//! would let a new category jump ahead of an old one just by its name.
//!
//! # Guides: `docs/guides/<slug>.md`
//!
//! ```text
//! ---
//! title: Designing a Chat Application
//! description: Explore the architecture of chat apps like WhatsApp and Messenger.
//! image: docs/diagrams/chat-app.svg
//! createdAt: 2024-03-10
//! draft: false
//! categories:
//!   - architecture
//! tags:
//!   - websocket
//! ---
//! ```
//!
//! Every field is required. `title` and `description` are non-empty strings; `image` is the path
//! of a file **relative to the repository root** (not to the guide), without `..`, and the file
//! must exist; `createdAt` is a date written `YYYY-MM-DD`; `draft` is `true` or `false`;
//! `categories` is a non-empty list of category slugs, each of which must exist; `tags` is a list
//! of strings (it may be empty). Drafts are checked like any other guide but left out of the index.
//!
//! In both folders a slug is the file name without `.md`, made of ASCII letters, digits, `-` and
//! `_` (so it needs no escaping in a link). Slugs are compared case-insensitively: `a.md` and
//! `A.md` are an error, because they would be one file on macOS and Windows. Unknown front-matter
//! fields are errors too, so that a typo never passes silently.
//!
//! # Order
//!
//! Categories by `order` (ascending); a category without any published guide is left out.
//! Within a category, guides are **newest first** (`createdAt` descending, as the site shows
//! them), then by `title` (ascending, ignoring case), then by slug. A guide in several categories
//! is listed under each of them.
//!
//! # Links
//!
//! By default links are relative to `README.md`, so they work on any Git host:
//! `docs/categories/<slug>.md` and `docs/guides/<slug>.md`. With `--base-url URL` they point at
//! the published site instead: `URL/categories/<slug>` and `URL/guides/<slug>` (a trailing `/` of
//! `URL` is dropped).
//!
//! # Errors
//!
//! Every problem found is reported, not just the first, each naming the file and, where there is
//! one, the field; nothing is written when there is any.

mod error;
mod frontmatter;
mod load;
mod readme;
mod render;

use std::path::Path;

pub use error::{Errors, Problem};
pub use readme::{END_MARKER, README, START_MARKER, splice};

/// Folder of the category files, relative to the repository root.
pub const CATEGORIES_DIR: &str = "docs/categories";
/// Folder of the guide files, relative to the repository root.
pub const GUIDES_DIR: &str = "docs/guides";

/// How to render the index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Where the site is published (already checked by [`parse_base_url`]); `None` for links
    /// relative to `README.md`.
    pub base_url: Option<String>,
}

/// What [`update_readme`] should do when the README differs from the generated index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Rewrite the block between the markers.
    Write,
    /// Write nothing; report whether the block is up to date (for CI).
    Check,
}

/// What [`update_readme`] found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The README already holds the index that would be generated.
    UpToDate,
    /// The README was rewritten ([`Mode::Write`] only).
    Updated,
    /// The README is stale ([`Mode::Check`] only); `first_difference` says where, for a human.
    OutOfDate {
        /// The first line that differs, with what it has and what it should have.
        first_difference: String,
    },
}

/// Renders the guide index found under `root` (the repository root): the lines that go between
/// the marker lines, each ending in `\n`.
pub fn render_index(root: &Path, opts: &Options) -> Result<String, Errors> {
    let mut problems = Vec::new();
    let docs = load::load(root, &mut problems);
    if problems.is_empty() {
        Ok(render::render(&docs, opts))
    } else {
        Err(Errors(problems))
    }
}

/// Renders the index and puts it into `root/README.md`, or in [`Mode::Check`] only compares.
///
/// Problems with the docs and with the README are reported together, and the README is then
/// left untouched. It is not rewritten either when it is already up to date, so its modification
/// time only changes when its content does.
pub fn update_readme(root: &Path, opts: &Options, mode: Mode) -> Result<Outcome, Errors> {
    let mut problems = Vec::new();
    let index = render_index(root, opts).map_err(|errors| problems.extend(errors.0));
    let path = root.join(README);
    let current = std::fs::read_to_string(&path).map_err(|err| {
        problems.push(Problem::file(
            README,
            format!("cannot read {}: {err}", path.display()),
        ));
    });
    // The markers are checked even when the docs have problems, so that all are reported.
    let spliced = current.as_ref().ok().and_then(|current| {
        let index = index.as_deref().unwrap_or_default();
        splice(current, index)
            .map_err(|problem| problems.push(problem))
            .ok()
    });
    if !problems.is_empty() {
        return Err(Errors(problems));
    }
    let (Ok(current), Some(new)) = (current, spliced) else {
        unreachable!("every failure above recorded a problem");
    };

    if current == new {
        return Ok(Outcome::UpToDate);
    }
    match mode {
        Mode::Check => Ok(Outcome::OutOfDate {
            first_difference: readme::first_difference(&current, &new),
        }),
        Mode::Write => {
            std::fs::write(&path, new).map_err(|err| {
                Errors(vec![Problem::file(
                    README,
                    format!("cannot write {}: {err}", path.display()),
                )])
            })?;
            Ok(Outcome::Updated)
        }
    }
}

/// The readers of one docs file, without the folder walk around them, for the fuzz targets
/// (`fuzz/`). Not part of the tool's interface.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    pub use serde_norway;
    use serde_norway::Mapping;

    use crate::{Errors, Options, Problem, frontmatter, load, render};

    /// The front-matter fields of `text`, as `cargo xtask readme` reads every docs file.
    pub fn front_matter(text: &str) -> Result<Mapping, Problem> {
        frontmatter::parse("docs/guides/fuzz.md", text)
    }

    /// The index rendered from one category file and one guide file (`(slug, text)` each), or
    /// every problem found in them; the guide's `image` is looked up under `root`.
    pub fn render_one(
        root: &Path,
        category: (&str, &str),
        guide: (&str, &str),
    ) -> Result<String, Errors> {
        let mut problems = Vec::new();
        let docs = load::load_one(root, category, guide, &mut problems);
        if problems.is_empty() {
            Ok(render::render(&docs, &Options::default()))
        } else {
            Err(Errors(problems))
        }
    }
}

/// Checks a `--base-url` value and returns it without a trailing `/`.
///
/// Only `http` and `https` URLs with a host are accepted, and no query or fragment, because the
/// slugs are appended to it as path segments.
pub fn parse_base_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("`{url}` must start with https:// or http://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("`{url}` has no host"));
    }
    if let Some(c) = url
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '?' | '#'))
    {
        return Err(format!(
            "`{url}` must not contain {c:?}: the slugs are appended to it as path segments"
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}
