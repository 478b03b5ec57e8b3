//! Python's `json.dumps` output for template values: templates that print tool schemas or
//! arguments with `tojson` must produce the same bytes transformers produces (spaces after
//! `,` and `:`, no HTML escaping, `1.0` for whole floats).

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

#[derive(Debug, Clone, Default)]
pub struct JsonOptions {
    /// Pretty-print with this many spaces per level.
    pub indent: Option<usize>,
    /// Escape every non-ASCII character as `\uXXXX`.
    pub ensure_ascii: bool,
    pub sort_keys: bool,
    /// (item separator, key separator); Python's defaults depend on `indent`.
    pub separators: Option<(String, String)>,
}

pub fn to_python_json(value: &Value, options: &JsonOptions) -> Result<String, Error> {
    let (item_separator, key_separator) = options.separators.clone().unwrap_or_else(|| {
        let item = if options.indent.is_some() { "," } else { ", " };
        (item.to_string(), ": ".to_string())
    });
    let writer = Writer {
        options,
        item_separator,
        key_separator,
    };
    let mut out = String::new();
    writer.write(value, 0, &mut out)?;
    Ok(out)
}

struct Writer<'a> {
    options: &'a JsonOptions,
    item_separator: String,
    key_separator: String,
}

impl Writer<'_> {
    fn write(&self, value: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&number(value)),
            ValueKind::String => self.write_string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container(('[', ']'), items.len(), depth, out, |index, out| {
                    self.write(&items[index], depth + 1, out)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((key_text(&key), item));
                }
                if self.options.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.write_container(('{', '}'), entries.len(), depth, out, |index, out| {
                    let (key, item) = &entries[index];
                    self.write_string(key, out);
                    out.push_str(&self.key_separator);
                    self.write(item, depth + 1, out)
                })?;
            }
            _ => {
                let detail = format!("Object of type {} is not JSON serializable", value.kind());
                return Err(Error::new(ErrorKind::InvalidOperation, detail));
            }
        }
        Ok(())
    }

    fn write_container(
        &self,
        (open, close): (char, char),
        len: usize,
        depth: usize,
        out: &mut String,
        mut write_item: impl FnMut(usize, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if len == 0 {
            out.push(close);
            return Ok(());
        }
        for index in 0..len {
            if index > 0 {
                out.push_str(&self.item_separator);
            }
            self.newline(depth + 1, out);
            write_item(index, out)?;
        }
        self.newline(depth, out);
        out.push(close);
        Ok(())
    }

    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(indent) = self.options.indent {
            out.push('\n');
            out.push_str(&" ".repeat(indent * depth));
        }
    }

    fn write_string(&self, text: &str, out: &mut String) {
        // serde_json escapes exactly what Python does with ensure_ascii=False: `"`, `\`,
        // \b \f \n \r \t, and other control characters as \u00XX.
        let escaped = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
        if !self.options.ensure_ascii {
            out.push_str(&escaped);
            return;
        }
        for c in escaped.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
}

/// Python's `str(key)` for the key types JSON allows.
fn key_text(key: &Value) -> String {
    match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::None | ValueKind::Undefined => "null".into(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.into(),
        _ => number(key),
    }
}

/// Python's float repr keeps a `.0` on whole numbers; integers print as they are.
fn number(value: &Value) -> String {
    if value.as_i64().is_some() || value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(float) if float.is_nan() => "NaN".into(),
        Ok(float) if float.is_infinite() => {
            if float > 0.0 { "Infinity" } else { "-Infinity" }.into()
        }
        Ok(float) if float.fract() == 0.0 && float.abs() < 1e16 => format!("{float:.1}"),
        Ok(float) => format!("{float}"),
        Err(_) => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use minijinja::value::Serde;
    use serde_json::json;

    use super::*;

    fn dumps(value: serde_json::Value, options: &JsonOptions) -> String {
        to_python_json(&Value::from(Serde(value)), options).expect("serializable")
    }

    #[test]
    fn matches_python_json_dumps() {
        // json.dumps({"name": "get_weather", "n": [1, 2.0, 2.5, None, True], "city": "Zürich <b>"},
        //            ensure_ascii=False): keys in the order given (serde_json's preserve_order)
        let value =
            json!({"name": "get_weather", "n": [1, 2.0, 2.5, null, true], "city": "Zürich <b>"});
        let compact = dumps(value.clone(), &JsonOptions::default());
        assert_eq!(
            compact,
            r#"{"name": "get_weather", "n": [1, 2.0, 2.5, null, true], "city": "Zürich <b>"}"#
        );
        let ascii = JsonOptions {
            ensure_ascii: true,
            ..Default::default()
        };
        assert!(dumps(value.clone(), &ascii).contains(r#""Z\u00fcrich <b>""#));
        let pretty = JsonOptions {
            indent: Some(2),
            ..Default::default()
        };
        assert_eq!(
            dumps(json!({"a": [1, {}], "b": []}), &pretty),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
        );
        assert_eq!(
            dumps(json!("tab\tquote\"\u{1}"), &JsonOptions::default()),
            r#""tab\tquote\"\u0001""#
        );
        let emoji = dumps(json!("😀"), &ascii);
        assert_eq!(emoji, r#""\ud83d\ude00""#);
    }
}
