//! Finding the marker lines in the README and replacing what lies between them.

use crate::Problem;

/// The README, relative to the repository root.
pub const README: &str = "README.md";
/// The line after which the generated index starts.
pub const START_MARKER: &str = "<!-- guides:start -->";
/// The line before which the generated index ends.
pub const END_MARKER: &str = "<!-- guides:end -->";

/// Where the generated block sits in a README: the bytes `start..end`, between the marker lines.
struct Block {
    start: usize,
    end: usize,
    /// The number (from 1) of the block's first line, for messages.
    first_line: usize,
    crlf: bool,
}

/// Finds the marker lines: each exactly once, alone on its line, start before end.
fn locate(readme: &str) -> Result<Block, Problem> {
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let mut offset = 0;
    for (number, line) in readme.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches('\n').trim_end_matches('\r');
        if content == START_MARKER {
            starts.push((number + 1, offset, line));
        } else if content == END_MARKER {
            ends.push((number + 1, offset, line));
        }
        offset += line.len();
    }
    let lines = |found: &[(usize, usize, &str)]| {
        found
            .iter()
            .map(|(n, _, _)| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let problem = |message: String| Err(Problem::file(README, message));
    match (starts.as_slice(), ends.as_slice()) {
        ([], _) | (_, []) => {
            let missing: Vec<String> = [
                (starts.is_empty(), START_MARKER),
                (ends.is_empty(), END_MARKER),
            ]
            .iter()
            .filter(|(missing, _)| *missing)
            .map(|(_, marker)| format!("`{marker}`"))
            .collect();
            problem(format!(
                "no line {} found; the guide index goes between a line `{START_MARKER}` and a \
                 line `{END_MARKER}`",
                missing.join(" and no line ")
            ))
        }
        ([_, _, ..], _) => problem(format!(
            "the line `{START_MARKER}` appears more than once (lines {})",
            lines(&starts)
        )),
        (_, [_, _, ..]) => problem(format!(
            "the line `{END_MARKER}` appears more than once (lines {})",
            lines(&ends)
        )),
        ([(start_line, start, start_text)], [(end_line, end, _)]) => {
            if end_line < start_line {
                return problem(format!(
                    "the line `{END_MARKER}` (line {end_line}) comes before the line \
                     `{START_MARKER}` (line {start_line})"
                ));
            }
            Ok(Block {
                start: start + start_text.len(),
                end: *end,
                first_line: start_line + 1,
                crlf: start_text.ends_with("\r\n"),
            })
        }
    }
}

/// Returns `readme` with the lines between the marker lines replaced by `index` (lines ending in
/// `\n`, as [`crate::render_index`] gives them), and every other byte unchanged. A README with
/// Windows line endings gets them in the index too.
pub fn splice(readme: &str, index: &str) -> Result<String, Problem> {
    let block = locate(readme)?;
    let index = if block.crlf {
        index.replace('\n', "\r\n")
    } else {
        index.to_owned()
    };
    let mut out = String::with_capacity(readme.len() + index.len());
    out.push_str(&readme[..block.start]);
    out.push_str(&index);
    out.push_str(&readme[block.end..]);
    Ok(out)
}

/// Describes the first line where `current` and `new` (the same README before and after
/// [`splice`]) differ, for `--check`.
pub(crate) fn first_difference(current: &str, new: &str) -> String {
    let block = match locate(current) {
        Ok(block) => block,
        Err(problem) => return problem.to_string(),
    };
    let mut old_lines = current.lines().skip(block.first_line - 1);
    let mut new_lines = new.lines().skip(block.first_line - 1);
    let mut number = block.first_line;
    loop {
        match (old_lines.next(), new_lines.next()) {
            (Some(old), Some(new)) if old == new => number += 1,
            (old, new) => {
                let show = |line: Option<&str>| {
                    line.map_or("(end of file)".to_owned(), |l| format!("{l:?}"))
                };
                return format!(
                    "{README} line {number}:\n  found:    {}\n  expected: {}",
                    show(old),
                    show(new)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_names_the_line() {
        let current = "# t\n<!-- guides:start -->\nold\n<!-- guides:end -->\n";
        let new = splice(current, "new\n").unwrap();
        let diff = first_difference(current, &new);
        assert!(diff.contains("line 3"), "{diff}");
        assert!(
            diff.contains("\"old\"") && diff.contains("\"new\""),
            "{diff}"
        );
    }

    #[test]
    fn crlf_readme_keeps_crlf() {
        let current = "a\r\n<!-- guides:start -->\r\n<!-- guides:end -->\r\nb\r\n";
        let new = splice(current, "x\n\ny\n").unwrap();
        assert_eq!(
            new,
            "a\r\n<!-- guides:start -->\r\nx\r\n\r\ny\r\n<!-- guides:end -->\r\nb\r\n"
        );
    }

    #[test]
    fn end_before_start_is_an_error() {
        let err = splice("<!-- guides:end -->\n<!-- guides:start -->\n", "").unwrap_err();
        assert!(err.message.contains("comes before"), "{err}");
    }
}
