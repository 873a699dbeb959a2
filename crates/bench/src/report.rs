//! Output: the human table at the end of a run, the `--json` object, progress bars.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// `--json`: shared by every subcommand.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct OutputArgs {
    /// Print one JSON object with every number on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl OutputArgs {
    /// Whether progress bars are wanted (indicatif itself hides them when stderr is no terminal).
    pub fn bars(&self) -> bool {
        !self.quiet
    }

    /// Prints `report` as JSON or as its table.
    pub fn print<T: Serialize + fmt::Display>(&self, report: &T) {
        if self.json {
            match serde_json::to_string_pretty(report) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("confab bench: cannot encode the report: {e}"),
            }
        } else {
            print!("{report}");
        }
    }
}

/// A two-column table of labelled values, with section headings.
#[derive(Default)]
pub struct Table {
    rows: Vec<(String, String)>,
}

impl Table {
    /// A table with a title line.
    pub fn new(title: impl Into<String>) -> Table {
        Table {
            rows: vec![(String::new(), title.into())],
        }
    }

    /// Adds a labelled value.
    pub fn row(&mut self, label: &str, value: impl fmt::Display) -> &mut Table {
        self.rows.push((label.to_owned(), value.to_string()));
        self
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .rows
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        for (label, value) in &self.rows {
            if label.is_empty() {
                writeln!(f, "{value}")?;
            } else {
                writeln!(f, "  {label:<width$}  {value}")?;
            }
        }
        Ok(())
    }
}

/// `code: n, code: n` or `none`.
pub fn fmt_counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server a run measured, as the reports name it.
pub fn fmt_server(server: &str, spawned: bool) -> String {
    format!("{server}{}", if spawned { " (spawned)" } else { "" })
}

/// A count with thousands separators, for tables.
pub fn fmt_n(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A progress bar on stderr (hidden when `show` is false).
pub fn bar(show: bool, len: u64, template: &str) -> ProgressBar {
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::with_draw_target(Some(len), target).with_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Prints a note for the user on stderr, above any progress bar.
pub fn note(msg: impl fmt::Display) {
    eprintln!("note: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_numbers_format() {
        assert_eq!(fmt_n(0), "0");
        assert_eq!(fmt_n(999), "999");
        assert_eq!(fmt_n(1000), "1,000");
        assert_eq!(fmt_n(1234567), "1,234,567");
        let mut m = BTreeMap::new();
        assert_eq!(fmt_counts(&m), "none");
        m.insert("rate_limited".to_owned(), 3);
        m.insert("closed".to_owned(), 1);
        assert_eq!(fmt_counts(&m), "closed: 1, rate_limited: 3");
    }

    #[test]
    fn table_aligns_labels() {
        let mut t = Table::new("title");
        t.row("a", 1).row("longer", "x");
        assert_eq!(t.to_string(), "title\n  a       1\n  longer  x\n");
    }
}
