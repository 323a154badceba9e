//! Output normalisation: blanking the fields that inherently differ between two servers.
//!
//! Two servers given the same requests must answer the same, except for a few inherent fields
//! (cluster and member IDs, raft indexes, database sizes, timings, client-side log timestamps).
//! A test names each of them: [`Normalizer::blank`] takes the field names exactly as they appear
//! in the output (JSON keys, table column headers, `-w fields` keys), so a reader sees what is not
//! compared. No regular expressions: each rule is a literal, targeted rewrite.

use serde_json::Value;

/// What one etcdctl step produced, normalised: how it ended, stdout and stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub exit: String,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// How `actual` differs from this outcome, etcd 3.5.16's: the exits, then line diffs of
    /// stdout and stderr. Empty when they are equal.
    pub fn diff(&self, actual: &Outcome) -> String {
        let mut out = String::new();
        if self.exit != actual.exit {
            out.push_str(&format!(
                "--- exit: expected {}, actual {}\n",
                self.exit, actual.exit
            ));
        }
        for (what, e, a) in [
            ("stdout", &self.stdout, &actual.stdout),
            ("stderr", &self.stderr, &actual.stderr),
        ] {
            if e != a {
                out.push_str(&format!(
                    "--- {what} (- expected from etcd 3.5.16, + actual):\n{}",
                    line_diff(e, a)
                ));
            }
        }
        out
    }
}

/// What a blanked value is replaced with.
pub const BLANK: &str = "<blanked>";

/// A set of named, targeted rewrites applied to command output before comparison.
#[derive(Clone, Debug, Default)]
pub struct Normalizer {
    replacements: Vec<(String, String)>,
    fields: Vec<String>,
    simple_columns: Vec<(Vec<String>, Vec<usize>)>,
    after_markers: Vec<String>,
    between_markers: Vec<(String, String)>,
}

impl Normalizer {
    /// No rewrites.
    pub fn new() -> Normalizer {
        Normalizer::default()
    }

    /// Replaces every occurrence of the literal `from` by `to` (applied first, in order).
    pub fn replace(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.replacements.push((from.into(), to.into()));
        self
    }

    /// Blanks the value of each named field wherever it appears:
    /// - a key of a JSON object, at any depth, on a line that is a JSON document
    ///   (`-w json` output, etcdctl's structured log lines on stderr);
    /// - a column header of a `-w table` table (the cells of that column);
    /// - a key of `-w fields` output (`"Key" : value` lines).
    pub fn blank(mut self, names: &[&str]) -> Self {
        self.fields.extend(names.iter().map(|s| s.to_string()));
        self
    }

    /// For `-w simple` lines of comma-separated values (`endpoint status`): a line that splits on
    /// `", "` into exactly `headers.len()` parts gets the parts named in `blank` blanked.
    ///
    /// # Panics
    /// If a name in `blank` is not in `headers`.
    pub fn blank_simple_columns(mut self, headers: &[&str], blank: &[&str]) -> Self {
        let idx = blank
            .iter()
            .map(|b| {
                headers
                    .iter()
                    .position(|h| h == b)
                    .unwrap_or_else(|| panic!("{b:?} is not one of {headers:?}"))
            })
            .collect();
        self.simple_columns
            .push((headers.iter().map(|s| s.to_string()).collect(), idx));
        self
    }

    /// Blanks the word following each occurrence of `marker` (up to whitespace, `,`, `"` or `|`);
    /// e.g. `"took = "` in `endpoint health` output.
    pub fn blank_after(mut self, marker: impl Into<String>) -> Self {
        self.after_markers.push(marker.into());
        self
    }

    /// Blanks the text between each occurrence of `open` and the next `close` on the same line;
    /// e.g. `"remaining("`, `"s)"` in `lease timetolive` output.
    pub fn blank_between(mut self, open: impl Into<String>, close: impl Into<String>) -> Self {
        self.between_markers.push((open.into(), close.into()));
        self
    }

    /// Applies all rewrites to `text`.
    pub fn apply(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (from, to) in &self.replacements {
            if !from.is_empty() {
                text = text.replace(from.as_str(), to);
            }
        }
        let lines: Vec<&str> = text.split('\n').collect();
        let mut out: Vec<String> = Vec::with_capacity(lines.len());
        let mut i = 0;
        while i < lines.len() {
            if is_table_line(lines[i]) {
                let start = i;
                while i < lines.len() && is_table_line(lines[i]) {
                    i += 1;
                }
                out.extend(self.table(&lines[start..i]));
                continue;
            }
            out.push(self.line(lines[i]));
            i += 1;
        }
        out.join("\n")
    }

    fn line(&self, line: &str) -> String {
        let mut line = line.to_owned();
        let trimmed = line.trim();
        if !self.fields.is_empty()
            && (trimmed.starts_with('{') || trimmed.starts_with('['))
            && let Ok(mut v) = serde_json::from_str::<Value>(trimmed)
            && blank_json(&mut v, &self.fields)
        {
            line = v.to_string();
        }
        // `-w fields`: `"Key" : value`
        if let Some(rest) = line.strip_prefix('"')
            && let Some((key, _)) = rest.split_once("\" : ")
            && self.fields.iter().any(|f| f == key)
        {
            line = format!("\"{key}\" : {BLANK}");
        }
        for (headers, idx) in &self.simple_columns {
            let mut parts: Vec<&str> = line.split(", ").collect();
            if parts.len() == headers.len() {
                for &i in idx {
                    parts[i] = BLANK;
                }
                line = parts.join(", ");
            }
        }
        for marker in &self.after_markers {
            line = blank_after(&line, marker);
        }
        for (open, close) in &self.between_markers {
            line = blank_between(&line, open, close);
        }
        line
    }

    fn table(&self, lines: &[&str]) -> Vec<String> {
        let cells = |l: &str| -> Vec<String> {
            let inner = l.trim().trim_start_matches('|').trim_end_matches('|');
            inner.split('|').map(|c| c.trim().to_owned()).collect()
        };
        let Some(header) = lines.iter().find(|l| l.trim_start().starts_with('|')) else {
            return lines.iter().map(|l| l.to_string()).collect();
        };
        let header = cells(header);
        let blanked: Vec<usize> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| self.fields.iter().any(|f| f == *h))
            .map(|(i, _)| i)
            .collect();
        if blanked.is_empty() {
            return lines.iter().map(|l| self.line(l)).collect();
        }
        // Re-render in a canonical, width-independent form.
        let mut seen_header = false;
        lines
            .iter()
            .map(|l| {
                if !l.trim_start().starts_with('|') {
                    return "+".to_owned();
                }
                let mut row = cells(l);
                if seen_header {
                    for &i in &blanked {
                        if let Some(c) = row.get_mut(i) {
                            *c = BLANK.to_owned();
                        }
                    }
                }
                seen_header = true;
                format!("| {} |", row.join(" | "))
            })
            .collect()
    }
}

fn is_table_line(l: &str) -> bool {
    let t = l.trim();
    (t.starts_with("+-") && t.ends_with('+')) || (t.starts_with('|') && t.ends_with('|'))
}

/// Blanks named keys in a JSON value, recursively; returns whether anything was blanked.
fn blank_json(v: &mut Value, fields: &[String]) -> bool {
    let mut changed = false;
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if fields.iter().any(|f| f == k) {
                    *val = Value::String(BLANK.to_owned());
                    changed = true;
                } else {
                    changed |= blank_json(val, fields);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                changed |= blank_json(item, fields);
            }
        }
        _ => {}
    }
    changed
}

fn blank_after(line: &str, marker: &str) -> String {
    if marker.is_empty() {
        return line.to_owned();
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(pos) = rest.find(marker) {
        let (before, after) = rest.split_at(pos + marker.len());
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, ',' | '"' | '|'))
            .unwrap_or(after.len());
        if end > 0 {
            out.push_str(BLANK);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn blank_between(line: &str, open: &str, close: &str) -> String {
    if open.is_empty() || close.is_empty() {
        return line.to_owned();
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(pos) = rest.find(open) {
        let (before, after) = rest.split_at(pos + open.len());
        out.push_str(before);
        match after.find(close) {
            Some(end) => {
                out.push_str(BLANK);
                rest = &after[end..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// Bytes as text, losslessly: valid UTF-8 as is, every invalid byte as `\xNN`.
pub fn bytes_to_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A line diff of `expected` against `actual`: `  ` common, `- ` only expected, `+ ` only actual.
pub fn line_diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    if a.len() * b.len() > 4_000_000 {
        return format!("--- expected:\n{expected}\n+++ actual:\n{actual}\n");
    }
    // Longest common subsequence table, from the end.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_are_blanked_at_any_depth() {
        let n = Normalizer::new().blank(&["member_id", "ts"]);
        let got = n.apply(r#"{"header":{"member_id":5,"revision":3},"x":[{"ts":"now"}]}"#);
        assert_eq!(
            got,
            r#"{"header":{"member_id":"<blanked>","revision":3},"x":[{"ts":"<blanked>"}]}"#
        );
        // Lines without a named field are left byte-for-byte alone.
        assert_eq!(n.apply(r#"{"b": 1,  "a":2}"#), r#"{"b": 1,  "a":2}"#);
    }

    #[test]
    fn table_columns_are_blanked_and_rerendered() {
        let n = Normalizer::new().blank(&["ID"]);
        let table = "+----+---+\n| ID | N |\n+----+---+\n| 12 | 1 |\n+----+---+\n";
        assert_eq!(n.apply(table), "+\n| ID | N |\n+\n| <blanked> | 1 |\n+\n");
    }

    #[test]
    fn fields_simple_and_markers() {
        let n = Normalizer::new()
            .blank(&["MemberID"])
            .blank_simple_columns(&["A", "B", "C"], &["B"])
            .blank_after("took = ")
            .replace("127.1.2.3", "<ip>");
        assert_eq!(n.apply("\"MemberID\" : 77"), "\"MemberID\" : <blanked>");
        assert_eq!(n.apply("\"Revision\" : 77"), "\"Revision\" : 77");
        assert_eq!(n.apply("x, y, z"), "x, <blanked>, z");
        assert_eq!(
            n.apply("http://127.1.2.3:2379 is healthy: took = 1.2ms"),
            "http://<ip>:2379 is healthy: took = <blanked>"
        );
        let n = Normalizer::new().blank_between("remaining(", "s)");
        assert_eq!(
            n.apply("lease 1f granted with TTL(100s), remaining(99s), attached keys([k])"),
            "lease 1f granted with TTL(100s), remaining(<blanked>s), attached keys([k])"
        );
        assert_eq!(n.apply("remaining(99"), "remaining(99");
    }

    #[test]
    fn text_and_diff() {
        assert_eq!(bytes_to_text(b"a\xffb"), "a\\xffb");
        assert_eq!(line_diff("a\nb\n", "a\nc\n"), "  a\n- b\n+ c\n");
    }
}
