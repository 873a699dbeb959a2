//! Front matter: the YAML between a file's first line `---` and the next line `---`, read field
//! by field so that every bad field of a file is reported, not only the first one serde meets.

use serde_norway::{Mapping, Value};

use crate::Problem;

/// Parses the front matter of `text` (the contents of `file`) into its fields.
pub(crate) fn parse(file: &str, text: &str) -> Result<Mapping, Problem> {
    // An editor may save a byte-order mark; it is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split_inclusive('\n');
    if lines.next().map(str::trim_end) != Some("---") {
        return Err(Problem::file(
            file,
            "no front matter: the first line must be `---`",
        ));
    }
    let start = text.find('\n').map_or(text.len(), |i| i + 1);
    let mut offset = start;
    let mut yaml = None;
    for line in lines {
        if line.trim_end() == "---" {
            yaml = Some(&text[start..offset]);
            break;
        }
        offset += line.len();
    }
    let Some(yaml) = yaml else {
        return Err(Problem::file(
            file,
            "front matter has no closing `---` line",
        ));
    };

    match serde_norway::from_str::<Value>(yaml) {
        // `---` directly followed by `---`: no fields at all, each reported as missing.
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(Value::Mapping(map)) => Ok(map),
        Ok(other) => Err(Problem::file(
            file,
            format!(
                "front matter must be a mapping of `field: value` lines, found {}",
                describe(&other)
            ),
        )),
        Err(err) => Err(Problem::file(
            file,
            // The YAML starts on the file's second line; report lines of the file.
            format!(
                "front matter is not valid YAML: {}",
                shift_line_numbers(&err.to_string(), 1)
            ),
        )),
    }
}

/// Adds `by` to every "line N" in a parser message, whose lines count from the YAML's start.
fn shift_line_numbers(message: &str, by: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("line ") {
        let (before, after) = rest.split_at(i + "line ".len());
        out.push_str(before);
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// Says what a YAML value is, for "expected X, found Y" messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// Takes the fields of one file's front matter, recording a [`Problem`] for each missing or
/// ill-typed one; [`Fields::finish`] then reports the fields nobody asked for.
pub(crate) struct Fields<'a> {
    file: &'a str,
    map: Mapping,
    problems: &'a mut Vec<Problem>,
    asked: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(file: &'a str, map: Mapping, problems: &'a mut Vec<Problem>) -> Self {
        Self {
            file,
            map,
            problems,
            asked: Vec::new(),
        }
    }

    /// Records a problem with `field` of this file.
    pub(crate) fn problem(&mut self, field: &str, message: impl Into<String>) {
        self.problems
            .push(Problem::field(self.file, field, message));
    }

    fn take(&mut self, field: &'static str) -> Option<Value> {
        self.asked.push(field);
        let value = self.map.remove(field);
        if value.is_none() {
            self.problem(field, "missing (it is required)");
        }
        value
    }

    fn expected(&mut self, field: &str, what: &str, found: &Value) {
        self.problem(field, format!("expected {what}, found {}", describe(found)));
    }

    /// A string; surrounding whitespace is dropped and inner runs of whitespace (a folded YAML
    /// string's newlines, say) become one space, since each index entry is one Markdown line.
    pub(crate) fn text(&mut self, field: &'static str) -> Option<String> {
        match self.take(field)? {
            Value::String(s) => {
                let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
                if s.is_empty() {
                    self.problem(field, "must not be empty");
                    None
                } else {
                    Some(s)
                }
            }
            other => {
                self.expected(field, "a string", &other);
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, field: &'static str) -> Option<bool> {
        match self.take(field)? {
            Value::Bool(b) => Some(b),
            other => {
                self.expected(field, "`true` or `false` (unquoted)", &other);
                None
            }
        }
    }

    pub(crate) fn integer(&mut self, field: &'static str) -> Option<i64> {
        match self.take(field)? {
            Value::Number(n) if n.as_i64().is_some() => n.as_i64(),
            other => {
                self.expected(field, "an integer", &other);
                None
            }
        }
    }

    pub(crate) fn date(&mut self, field: &'static str) -> Option<Date> {
        match self.take(field)? {
            Value::String(s) => match Date::parse(&s) {
                Ok(date) => Some(date),
                Err(why) => {
                    self.problem(
                        field,
                        format!("{s:?} is not a date written YYYY-MM-DD: {why}"),
                    );
                    None
                }
            },
            other => {
                self.expected(field, "a date written YYYY-MM-DD", &other);
                None
            }
        }
    }

    /// A list of strings, each trimmed and non-empty (it may be an empty list).
    pub(crate) fn text_list(&mut self, field: &'static str) -> Option<Vec<String>> {
        let items = match self.take(field)? {
            Value::Sequence(items) => items,
            other => {
                self.expected(field, "a list of strings", &other);
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) if !s.trim().is_empty() => out.push(s.trim().to_owned()),
                other => {
                    ok = false;
                    let what = match other {
                        Value::String(_) => "an empty string".to_owned(),
                        other => describe(other),
                    };
                    self.problem(
                        field,
                        format!("item {} must be a non-empty string, found {what}", i + 1),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    /// Reports every field that was not asked for: probably a typo, and otherwise a field
    /// this tool would silently ignore.
    pub(crate) fn finish(self) {
        let known = self.asked.join(", ");
        for (key, _) in self.map {
            let problem = match key {
                Value::String(name) => Problem::field(
                    self.file,
                    name,
                    format!("unknown field (the known ones are: {known})"),
                ),
                other => Problem::file(
                    self.file,
                    format!("field names must be strings, found {}", describe(&other)),
                ),
            };
            self.problems.push(problem);
        }
    }
}

/// A calendar date; the derived order is chronological because the fields go from year to day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Date {
    year: u16,
    month: u8,
    day: u8,
}

impl Date {
    /// Parses exactly `YYYY-MM-DD`, checking that the day exists (leap years included).
    pub(crate) fn parse(s: &str) -> Result<Self, &'static str> {
        let b = s.as_bytes();
        let shape_ok = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        if !shape_ok {
            return Err("expected four digits, `-`, two digits, `-`, two digits");
        }
        let num = |range: std::ops::Range<usize>| s[range].parse::<u16>().unwrap_or(0);
        let (year, month, day) = (num(0..4), num(5..7), num(8..10));
        if !(1..=12).contains(&month) {
            return Err("the month must be 01 to 12");
        }
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if !(1..=days).contains(&day) {
            return Err("that day does not exist in that month");
        }
        Ok(Self {
            year,
            month: month as u8,
            day: day as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert!(Date::parse("2024-02-29").is_ok());
        assert!(Date::parse("2023-02-29").is_err());
        assert!(Date::parse("1900-02-29").is_err());
        assert!(Date::parse("2000-02-29").is_ok());
        assert!(Date::parse("2024-13-01").is_err());
        assert!(Date::parse("2024-04-31").is_err());
        assert!(Date::parse("2024-1-01").is_err());
        assert!(Date::parse("2024-01-01T00:00").is_err());
        assert!(Date::parse("2024-01-02").unwrap() > Date::parse("2023-12-31").unwrap());
    }

    #[test]
    fn line_numbers_are_shifted() {
        assert_eq!(
            shift_line_numbers("bad at line 3 column 1, while parsing at line 1", 1),
            "bad at line 4 column 1, while parsing at line 2"
        );
        assert_eq!(
            shift_line_numbers("no number: line x", 1),
            "no number: line x"
        );
    }
}
