//! YAML → `serde_json::Value`: the same YAML→JSON→typed path Kubernetes uses (sigs.k8s.io/yaml).
//!
//! Owns scalar resolution with the YAML 1.2 core schema: `true`/`false`, `null`/`~`/empty,
//! integers (decimal, `0x`, `0o`), floats; everything else, and every quoted or block scalar,
//! is a string (`yes`, `no`, `on` stay strings, unlike YAML 1.1). Anchors and aliases are
//! expanded, and merge keys (`<<: *base`) are applied. Mapping keys must be strings and unique.
//!
//! One deliberate deviation from YAML 1.2: an integer with a leading zero (`0644`) is octal,
//! as in the YAML 1.1 decoder Kubernetes uses. Manifests write file modes that way
//! (`defaultMode: 0400`); reading them as decimal would silently grant the wrong permissions.
//!
//! It must never know about Kubernetes types: typed decoding happens on the resulting value.
//! Errors carry the 1-based line and column of the offending node.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, StrInput, Tag};
use serde_json::{Map, Number, Value};

mod stream;

pub use stream::each_document_read;

/// A YAML syntax or schema error, with its position (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {} column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for YamlError {}

impl YamlError {
    fn at(span: &Span, message: impl Into<String>) -> Self {
        YamlError {
            line: span.start.line(),
            column: span.start.col() + 1,
            message: message.into(),
        }
    }
}

impl From<ScanError> for YamlError {
    fn from(e: ScanError) -> Self {
        YamlError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_string(),
        }
    }
}

/// Parses every document of a YAML stream, each with the span of its start. An empty document
/// is `Value::Null`.
pub fn parse_documents(text: &str) -> Result<Vec<(Value, Span)>, YamlError> {
    let mut documents = Vec::new();
    each_document(text, |value, span| documents.push((value, span)))?;
    Ok(documents)
}

/// Parses the documents of a YAML stream one at a time, handing each (with the span of its
/// start) to `f` before the next is parsed, so that a long stream is never held as values at
/// once. On an error, the documents before it have been handed over.
pub fn each_document(text: &str, mut f: impl FnMut(Value, Span)) -> Result<(), YamlError> {
    let mut builder = Builder {
        parser: Parser::new(StrInput::new(text)),
        anchors: HashMap::new(),
    };
    loop {
        let (event, span) = builder.next()?;
        match event {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => return Ok(()),
            Event::DocumentStart(_) => {
                // Anchors are scoped to one document.
                builder.anchors.clear();
                let (event, node_span) = builder.next()?;
                let value = builder.node(event, node_span)?;
                f(value, span);
            }
            other => {
                return Err(YamlError::at(&span, format!("unexpected event {other:?}")));
            }
        }
    }
}

/// Parses a stream that must hold at most one non-empty document (a manifest or a config file).
/// No document at all, or only empty ones, gives `Value::Null`.
pub fn parse_one(text: &str) -> Result<Value, YamlError> {
    let mut found = None;
    for (value, span) in parse_documents(text)? {
        if value.is_null() {
            continue;
        }
        if found.is_some() {
            return Err(YamlError::at(
                &span,
                "more than one document: expected exactly one",
            ));
        }
        found = Some(value);
    }
    Ok(found.unwrap_or(Value::Null))
}

struct Builder<'a> {
    parser: Parser<'a, StrInput<'a>>,
    anchors: HashMap<usize, Value>,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), YamlError> {
        match self.parser.next_event() {
            Some(result) => Ok(result?),
            None => Err(YamlError {
                line: 0,
                column: 0,
                message: "unexpected end of input".to_string(),
            }),
        }
    }

    /// Builds the node that starts with `event`.
    fn node(&mut self, event: Event<'a>, span: Span) -> Result<Value, YamlError> {
        let (value, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => (scalar(&text, style, tag, &span)?, anchor),
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(value) => return Ok(value.clone()),
                None => return Err(YamlError::at(&span, "unknown anchor")),
            },
            Event::SequenceStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq", &span)?;
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(event, span)?);
                }
                (Value::Array(items), anchor)
            }
            Event::MappingStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map", &span)?;
                (Value::Object(self.mapping()?), anchor)
            }
            other => return Err(YamlError::at(&span, format!("unexpected event {other:?}"))),
        };
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        Ok(value)
    }

    fn mapping(&mut self) -> Result<Map<String, Value>, YamlError> {
        let mut map = Map::new();
        // Entries from merge keys (`<<: *base`): explicit keys win over them.
        let mut merged = Map::new();
        loop {
            let (event, key_span) = self.next()?;
            if matches!(event, Event::MappingEnd) {
                for (key, value) in merged {
                    map.entry(key).or_insert(value);
                }
                return Ok(map);
            }
            let is_merge_key =
                matches!(&event, Event::Scalar(text, ScalarStyle::Plain, _, None) if text == "<<");
            let key = match self.node(event, key_span)? {
                Value::String(key) => key,
                other => {
                    return Err(YamlError::at(
                        &key_span,
                        format!("mapping key {other} is not a string: quote it"),
                    ));
                }
            };
            let (event, span) = self.next()?;
            let value = self.node(event, span)?;
            if is_merge_key {
                merge_into(&mut merged, value, &span)?;
                continue;
            }
            if map.contains_key(&key) {
                return Err(YamlError::at(
                    &key_span,
                    format!("duplicate mapping key {key:?}"),
                ));
            }
            map.insert(key, value);
        }
    }
}

/// The YAML merge key (supported by the decoder Kubernetes uses): `<<: *a` or `<<: [*a, *b]`,
/// where earlier mappings win over later ones.
fn merge_into(merged: &mut Map<String, Value>, value: Value, span: &Span) -> Result<(), YamlError> {
    let sources = match value {
        Value::Object(map) => vec![map],
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(map) => Ok(map),
                _ => Err(YamlError::at(
                    span,
                    "merge key: expected a mapping or a list of mappings",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(YamlError::at(
                span,
                "merge key: expected a mapping or a list of mappings",
            ));
        }
    };
    for map in sources {
        for (key, value) in map {
            merged.entry(key).or_insert(value);
        }
    }
    Ok(())
}

fn check_collection_tag(tag: Option<&Tag>, expected: &str, span: &Span) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(tag) if tag.is_yaml_core_schema() && tag.suffix == expected => Ok(()),
        Some(tag) => Err(YamlError::at(span, format!("unsupported tag {tag}"))),
    }
}

/// Resolves one scalar with the core schema; a core-schema tag (`!!str`, `!!int`, ...) forces
/// the type, any other tag is an error.
fn scalar(
    text: &str,
    style: ScalarStyle,
    tag: Option<Cow<'_, Tag>>,
    span: &Span,
) -> Result<Value, YamlError> {
    let forced = match &tag {
        None => None,
        Some(tag) if tag.is_yaml_core_schema() => Some(tag.suffix.as_str()),
        Some(tag) => return Err(YamlError::at(span, format!("unsupported tag {tag}"))),
    };
    let resolved = if style == ScalarStyle::Plain || forced.is_some() {
        resolve_plain(text).map_err(|message| YamlError::at(span, message))?
    } else {
        Value::String(text.to_string())
    };
    let matches = match forced {
        None => true,
        Some("str") => return Ok(Value::String(text.to_string())),
        Some("null") => resolved.is_null(),
        Some("bool") => resolved.is_boolean(),
        Some("int") => resolved.is_i64() || resolved.is_u64(),
        Some("float") => resolved.is_number(),
        Some(other) => return Err(YamlError::at(span, format!("unsupported tag !!{other}"))),
    };
    if !matches {
        return Err(YamlError::at(
            span,
            format!("{text:?} does not match its tag !!{}", forced.unwrap_or("")),
        ));
    }
    Ok(resolved)
}

/// The YAML 1.2 core schema for plain scalars.
fn resolve_plain(text: &str) -> Result<Value, String> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x")
        && !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return radix_int(text, hex, 16);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && !oct.is_empty()
        && oct.bytes().all(|b| matches!(b, b'0'..=b'7'))
    {
        return radix_int(text, oct, 8);
    }
    // YAML 1.1 / Kubernetes octal: see the module doc.
    if text.len() > 1 && text.starts_with('0') && text.bytes().all(|b| matches!(b, b'0'..=b'7')) {
        return radix_int(text, &text[1..], 8);
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Value::Number(i.into()));
        }
        if let Ok(u) = text.trim_start_matches('+').parse::<u64>() {
            return Ok(Value::Number(u.into()));
        }
        // Too large for 64 bits: fall through to a float, like Go's YAML decoders.
    }
    if matches!(
        unsigned,
        ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN"
    ) {
        return Err(format!(
            "{text}: infinity and NaN cannot be represented in JSON"
        ));
    }
    if is_core_float(unsigned)
        && let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64)
    {
        return Ok(Value::Number(n));
    }
    Ok(Value::String(text.to_string()))
}

fn radix_int(text: &str, digits: &str, radix: u32) -> Result<Value, String> {
    u64::from_str_radix(digits, radix)
        .map(|u| Value::Number(u.into()))
        .map_err(|_| format!("integer {text} does not fit in 64 bits"))
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, the sign already removed.
fn is_core_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (mantissa, None),
    };
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match frac {
        None => !int.is_empty() && digits(int),
        Some(frac) => digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty()),
    };
    let exponent_ok = match exponent {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits(e)
        }
    };
    mantissa_ok && exponent_ok
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_follow_the_core_schema() {
        let cases: &[(&str, Value)] = &[
            ("a: yes", json!({"a": "yes"})),
            ("a: no", json!({"a": "no"})),
            ("a: on", json!({"a": "on"})),
            ("a: true", json!({"a": true})),
            ("a: False", json!({"a": false})),
            ("a: ~", json!({"a": null})),
            ("a: null", json!({"a": null})),
            ("a:", json!({"a": null})),
            ("a: 42", json!({"a": 42})),
            ("a: -7", json!({"a": -7})),
            ("a: 0x1F", json!({"a": 31})),
            ("a: 0o17", json!({"a": 15})),
            ("a: 0644", json!({"a": 420})),
            ("a: 0", json!({"a": 0})),
            ("a: 09", json!({"a": 9})),
            ("a: 1.5", json!({"a": 1.5})),
            ("a: 1e3", json!({"a": 1000.0})),
            ("a: .5", json!({"a": 0.5})),
            ("a: 1.2.3", json!({"a": "1.2.3"})),
            ("a: 0x", json!({"a": "0x"})),
            ("a: \"42\"", json!({"a": "42"})),
            ("a: 'true'", json!({"a": "true"})),
            ("a: !!str 42", json!({"a": "42"})),
            ("a: !!int 42", json!({"a": 42})),
            ("a: |\n  x\n  y\n", json!({"a": "x\ny\n"})),
            ("a: 10Mi", json!({"a": "10Mi"})),
            ("- 1\n- b\n", json!([1, "b"])),
            ("a: {b: [1, 2]}", json!({"a": {"b": [1, 2]}})),
        ];
        for (text, want) in cases {
            assert_eq!(parse_one(text).as_ref(), Ok(want), "input {text:?}");
        }
    }

    #[test]
    fn anchors_and_aliases_are_expanded() {
        let text = "base: &b {image: nginx}\ncopy: *b\nname: &n web\nother: *n\n";
        assert_eq!(
            parse_one(text),
            Ok(
                json!({"base": {"image": "nginx"}, "copy": {"image": "nginx"},
                      "name": "web", "other": "web"})
            )
        );
    }

    #[test]
    fn merge_keys_fill_in_missing_keys() {
        let text = "\
base: &b {image: nginx, tty: true}
other: &o {stdin: true, tty: false}
one: {<<: *b, tty: false}
two:
  <<: [*b, *o]
  name: x
quoted: {'<<': 1}
";
        assert_eq!(
            parse_one(text).map(|v| (v["one"].clone(), v["two"].clone(), v["quoted"].clone())),
            Ok((
                json!({"image": "nginx", "tty": false}),
                json!({"image": "nginx", "tty": true, "stdin": true, "name": "x"}),
                json!({"<<": 1}),
            ))
        );
        assert!(parse_one("a: {<<: 1}").is_err());
    }

    #[test]
    fn documents_count_only_when_non_empty() {
        assert_eq!(parse_one(""), Ok(Value::Null));
        assert_eq!(parse_one("# only a comment\n"), Ok(Value::Null));
        assert_eq!(parse_one("---\na: 1\n---\n"), Ok(json!({"a": 1})));
        assert_eq!(parse_documents("a: 1\n---\nb: 2\n").map(|d| d.len()), Ok(2));
    }

    #[test]
    fn errors_carry_line_and_column() {
        let cases: &[(&str, usize, usize, &str)] = &[
            ("a: 1\na: 2\n", 2, 1, "duplicate mapping key \"a\""),
            ("a: 1\n---\nb: 2\n", 2, 1, "more than one document"),
            ("a: 1\n1: x\n", 2, 1, "mapping key 1 is not a string"),
            ("a: 1\ntrue: x\n", 2, 1, "mapping key true is not a string"),
            ("a: .inf\n", 1, 4, "cannot be represented in JSON"),
            ("a: !!int abc\n", 1, 4, "does not match its tag"),
            ("a: !custom x\n", 1, 4, "unsupported tag"),
            ("a: *nope\n", 1, 4, "unknown anchor"),
            ("a: [1, 2\n", 2, 1, ""),
            ("a: b\n  c: d\n", 2, 4, ""),
        ];
        for (text, line, column, fragment) in cases {
            let err = parse_one(text).expect_err(text);
            assert_eq!((err.line, err.column), (*line, *column), "{text:?}: {err}");
            assert!(err.to_string().contains(fragment), "{text:?}: {err}");
        }
    }
}
