//! Reads `docs/categories` and `docs/guides` and checks them against each other.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::ErrorKind;
use std::path::{Component, Path};

use crate::frontmatter::{self, Date, Fields};
use crate::{CATEGORIES_DIR, GUIDES_DIR, Problem};

/// A category, as its file describes it.
pub(crate) struct Category {
    pub(crate) slug: String,
    pub(crate) title: String,
    pub(crate) description: String,
    pub(crate) order: i64,
}

/// What the index needs of a guide; `image` and `tags` are checked but not shown.
pub(crate) struct Guide {
    pub(crate) slug: String,
    pub(crate) title: String,
    pub(crate) description: String,
    pub(crate) created_at: Date,
    pub(crate) draft: bool,
    pub(crate) categories: Vec<String>,
}

/// Everything under `docs/` that parsed; only meaningful when no problem was recorded.
pub(crate) struct Docs {
    pub(crate) categories: Vec<Category>,
    pub(crate) guides: Vec<Guide>,
}

/// One Markdown file of a docs folder.
struct Source {
    slug: String,
    /// Relative to the repository root, for messages.
    file: String,
    text: String,
}

pub(crate) fn load(root: &Path, problems: &mut Vec<Problem>) -> Docs {
    // The categories folder must exist (a wrong --root shows up here); the guides folder may
    // not exist yet, which is simply no guides.
    let category_files = list(root, CATEGORIES_DIR, true, problems);
    let guide_files = list(root, GUIDES_DIR, false, problems);

    let categories: Vec<Category> = category_files
        .iter()
        .filter_map(|source| category(source, problems))
        .collect();
    check_orders(&category_files, &categories, problems);

    // Every category file counts as existing, even one with a bad field, so that a broken
    // category is reported once rather than again by each of its guides.
    let known: BTreeSet<&str> = category_files.iter().map(|c| c.slug.as_str()).collect();
    let guides = guide_files
        .iter()
        .filter_map(|source| guide(root, source, &known, problems))
        .collect();

    Docs { categories, guides }
}

/// One category file and one guide file, read and checked as [`load`] reads the folders (the
/// slugs are the file names without `.md`): for the fuzz targets, which have no folders.
pub(crate) fn load_one(
    root: &Path,
    category_file: (&str, &str),
    guide_file: (&str, &str),
    problems: &mut Vec<Problem>,
) -> Docs {
    let source = |dir: &str, (slug, text): (&str, &str)| Source {
        slug: slug.to_owned(),
        file: format!("{dir}/{slug}.md"),
        text: text.to_owned(),
    };
    let category_file = source(CATEGORIES_DIR, category_file);
    let guide_file = source(GUIDES_DIR, guide_file);
    let known = BTreeSet::from([category_file.slug.as_str()]);
    Docs {
        categories: category(&category_file, problems).into_iter().collect(),
        guides: guide(root, &guide_file, &known, problems)
            .into_iter()
            .collect(),
    }
}

/// The `*.md` files of `root/dir`, sorted by name so that output and messages are stable.
fn list(root: &Path, dir: &str, required: bool, problems: &mut Vec<Problem>) -> Vec<Source> {
    let path = root.join(dir);
    let entries = match std::fs::read_dir(&path) {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound && !required => return Vec::new(),
        Err(err) => {
            problems.push(Problem::file(
                dir,
                format!(
                    "cannot read the folder {}: {err} (is --root the repository root?)",
                    path.display()
                ),
            ));
            return Vec::new();
        }
    };

    let mut names = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                problems.push(Problem::file(dir, format!("cannot list the folder: {err}")));
                continue;
            }
        };
        let name = match entry.file_name().into_string() {
            Ok(name) => name,
            Err(name) => {
                problems.push(Problem::file(
                    format!("{dir}/{}", name.to_string_lossy()),
                    "the file name is not UTF-8",
                ));
                continue;
            }
        };
        // Only Markdown files are docs; a diagram or a subfolder next to them is not.
        if name.ends_with(".md") && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();

    // Lower-cased slug -> the file that has it, to catch slugs equal but for case.
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut sources = Vec::new();
    for name in names {
        let file = format!("{dir}/{name}");
        let slug = name.trim_end_matches(".md").to_owned();
        if slug.is_empty()
            || !slug
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push(Problem::file(
                &file,
                format!(
                    "the slug {slug:?} (the file name without .md) may only contain ASCII \
                     letters, digits, `-` and `_`, so that links to it need no escaping"
                ),
            ));
        }
        match seen.get(&slug.to_lowercase()) {
            Some(first) => problems.push(Problem::file(
                &file,
                format!(
                    "duplicate slug: {first} has the same slug when case is ignored, and the \
                     two would be one file on case-insensitive file systems; rename one"
                ),
            )),
            None => {
                seen.insert(slug.to_lowercase(), file.clone());
            }
        }
        match std::fs::read_to_string(root.join(&file)) {
            Ok(text) => sources.push(Source { slug, file, text }),
            Err(err) => problems.push(Problem::file(&file, format!("cannot read: {err}"))),
        }
    }
    sources
}

fn category(source: &Source, problems: &mut Vec<Problem>) -> Option<Category> {
    let map = frontmatter::parse(&source.file, &source.text)
        .map_err(|problem| problems.push(problem))
        .ok()?;
    let mut fields = Fields::new(&source.file, map, problems);
    let title = fields.text("title");
    let description = fields.text("description");
    let order = fields.integer("order");
    fields.finish();
    Some(Category {
        slug: source.slug.clone(),
        title: title?,
        description: description?,
        order: order?,
    })
}

/// Two categories with one `order` are an error rather than tied by slug: the author meant a
/// position, and a silent tie-break would let a new category jump ahead by its name alone.
fn check_orders(sources: &[Source], categories: &[Category], problems: &mut Vec<Problem>) {
    let mut by_order: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for category in categories {
        by_order
            .entry(category.order)
            .or_default()
            .push(&category.slug);
    }
    let file_of = |slug: &str| {
        sources
            .iter()
            .find(|s| s.slug == slug)
            .map_or_else(String::new, |s| s.file.clone())
    };
    for (order, slugs) in by_order {
        let first = file_of(slugs[0]);
        for slug in &slugs[1..] {
            problems.push(Problem::field(
                file_of(slug),
                "order",
                format!("{order} is also the order of {first}; give each category its own order"),
            ));
        }
    }
}

fn guide(
    root: &Path,
    source: &Source,
    known: &BTreeSet<&str>,
    problems: &mut Vec<Problem>,
) -> Option<Guide> {
    let map = frontmatter::parse(&source.file, &source.text)
        .map_err(|problem| problems.push(problem))
        .ok()?;
    let mut fields = Fields::new(&source.file, map, problems);
    let title = fields.text("title");
    let description = fields.text("description");

    let image = fields.text("image");
    if let Some(Err(why)) = image.as_deref().map(|image| check_image(root, image)) {
        fields.problem("image", why);
    }

    let created_at = fields.date("createdAt");
    let draft = fields.boolean("draft");

    let categories = fields.text_list("categories");
    let mut categories_ok = categories.is_some();
    if let Some(categories) = &categories {
        if categories.is_empty() {
            categories_ok = false;
            fields.problem(
                "categories",
                "lists no category, so the guide would appear nowhere",
            );
        }
        let mut listed = BTreeSet::new();
        for slug in categories {
            if !listed.insert(slug) {
                categories_ok = false;
                fields.problem("categories", format!("lists `{slug}` twice"));
            } else if !known.contains(slug.as_str()) {
                categories_ok = false;
                let known = known.iter().copied().collect::<Vec<_>>().join(", ");
                fields.problem(
                    "categories",
                    format!(
                        "unknown category `{slug}`: there is no {CATEGORIES_DIR}/{slug}.md \
                         (known categories: {known})"
                    ),
                );
            }
        }
    }

    // Checked for its type only: tags are for the site, not the index.
    let _tags = fields.text_list("tags");
    fields.finish();

    Some(Guide {
        slug: source.slug.clone(),
        title: title?,
        description: description?,
        created_at: created_at?,
        draft: draft?,
        categories: categories.filter(|_| categories_ok)?,
    })
}

/// An image is a file of the repository, named relative to its root: the same path then works
/// for every guide, wherever it sits, and for the site generator.
fn check_image(root: &Path, image: &str) -> Result<(), String> {
    if image.contains("://") {
        return Err(format!(
            "{image:?} is a URL; it must be the path of a file in the repository, relative to \
             the repository root"
        ));
    }
    let path = Path::new(image);
    if path.is_absolute() || image.starts_with('/') {
        return Err(format!(
            "{image:?} is absolute; it must be relative to the repository root"
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{image:?} contains `..`; the path is relative to the repository root, not to the guide"
        ));
    }
    if !root.join(path).is_file() {
        return Err(format!(
            "{image:?} does not exist (the path is relative to the repository root, not to the \
             guide)"
        ));
    }
    Ok(())
}
