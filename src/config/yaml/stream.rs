//! A YAML stream read one document at a time, so that a long file (a `services/` folder with
//! 10 000 Services) is never held as text at once: only the current document's lines are.
//!
//! The stream is cut at document markers before it is parsed: a line that starts with `---`
//! or `...` followed by a space, a tab or the line's end. YAML forbids such a line inside any
//! content (YAML 1.2, `c-forbidden`), so a cut there never splits a node. A `---` does not cut
//! before the first content line of a part, so directives (`%YAML`) and comments stay with the
//! document they precede. Each part is parsed by [`super::each_document`]; errors give lines of
//! the whole stream.

use std::io::BufRead;

use serde_json::Value;

use super::{YamlError, each_document};

/// Parses the documents of `input` one at a time, handing each to `f` before the next is read.
/// On an error (YAML, or the input is unreadable or not UTF-8), the documents before it have
/// been handed over.
pub fn each_document_read(
    mut input: impl BufRead,
    mut f: impl FnMut(Value),
) -> Result<(), YamlError> {
    let mut part = Part::default();
    let mut raw = Vec::new();
    let mut line_no = 0;
    loop {
        raw.clear();
        let read = input.read_until(b'\n', &mut raw).map_err(|e| YamlError {
            line: line_no + 1,
            column: 1,
            message: e.to_string(),
        })?;
        if read == 0 {
            return part.parse(&mut f);
        }
        line_no += 1;
        let line = std::str::from_utf8(&raw).map_err(|e| YamlError {
            line: line_no,
            column: e.valid_up_to() + 1,
            message: "not valid UTF-8".to_string(),
        })?;
        let marker = line.strip_prefix('\u{feff}').unwrap_or(line);
        if is_marker(marker, "---") {
            if part.has_content {
                part.parse(&mut f)?;
                part.first_line = line_no;
            }
            part.push(line, true);
        } else if is_marker(marker, "...") {
            part.push(line, false);
            part.parse(&mut f)?;
            part.first_line = line_no + 1;
        } else {
            let trimmed = line.trim_start();
            let is_content = !(trimmed.is_empty() || line.starts_with(['#', '%']));
            part.push(line, is_content);
        }
    }
}

/// The lines of the document being read.
struct Part {
    text: String,
    /// The stream's line number of `text`'s first line.
    first_line: usize,
    /// Has a document begun (a `---` or a content line)? Then the next `---` starts another.
    has_content: bool,
}

impl Default for Part {
    fn default() -> Part {
        Part {
            text: String::new(),
            first_line: 1,
            has_content: false,
        }
    }
}

impl Part {
    fn push(&mut self, line: &str, is_content: bool) {
        self.text.push_str(line);
        self.has_content |= is_content;
    }

    /// Parses and empties the part.
    fn parse(&mut self, f: &mut impl FnMut(Value)) -> Result<(), YamlError> {
        let result = each_document(&self.text, |value, _| f(value)).map_err(|mut e| {
            if e.line > 0 {
                e.line += self.first_line - 1;
            }
            e
        });
        self.text.clear();
        self.has_content = false;
        result
    }
}

/// Is `line` the marker `m` (`---` or `...`), alone or followed by a space or a tab?
fn is_marker(line: &str, m: &str) -> bool {
    line.strip_prefix(m)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn read(text: &str) -> (Vec<Value>, Option<String>) {
        let mut docs = Vec::new();
        let err = each_document_read(text.as_bytes(), |v| docs.push(v)).err();
        (docs, err.map(|e| e.to_string()))
    }

    #[test]
    fn documents_read_line_by_line_are_those_of_the_whole_stream() {
        let streams = [
            "a: 1\n---\nb: 2\n",
            "# head\n---\na: 1\n--- {b: 2}\n---\n...\n%YAML 1.2\n---\nc: |\n  x\n  --- not a marker\n",
            "---\r\na: [1,\r\n 2]\r\n---\r\n",
            "\u{feff}--- a\n--- b\n...\n",
            "x: &a {k: v}\ny: *a\n---\nz: 3",
            "",
            "--- |\n  text\n...\n--- 'q'\n",
        ];
        for text in streams {
            let whole: Vec<Value> = crate::config::yaml::parse_documents(text)
                .unwrap()
                .into_iter()
                .map(|(v, _)| v)
                .collect();
            assert_eq!(read(text), (whole, None), "{text:?}");
        }
    }

    #[test]
    fn an_error_names_its_line_in_the_whole_stream_after_the_documents_before_it() {
        let (docs, err) = read("a: 1\n---\nb: 2\n---\nc: [1\nd: 2\n---\ne: 5\n");
        assert_eq!(docs, vec![json!({"a": 1}), json!({"b": 2})]);
        let err = err.unwrap();
        assert!(
            err.starts_with("line 6 ") || err.starts_with("line 7 "),
            "{err}"
        );
        let (docs, err) = read("a: 1\n---\nb: \"\u{e9}\"\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(err, None);
        let (docs, err) = each_bytes(b"a: 1\n---\nb: \xff\n");
        assert_eq!(docs, vec![json!({"a": 1})]);
        assert_eq!(err.unwrap(), "line 3 column 4: not valid UTF-8");
    }

    fn each_bytes(bytes: &[u8]) -> (Vec<Value>, Option<String>) {
        let mut docs = Vec::new();
        let err = each_document_read(bytes, |v| docs.push(v)).err();
        (docs, err.map(|e| e.to_string()))
    }
}
