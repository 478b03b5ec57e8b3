//! The globals and filters transformers adds to a chat template's Jinja environment.

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

use super::{clock, json};

/// Marks errors raised by the template itself, so their message is passed on verbatim.
#[derive(Debug, thiserror::Error)]
#[error("raised by the chat template")]
struct RaisedByTemplate;

pub fn register(environment: &mut Environment<'static>) {
    environment.add_function("raise_exception", raise_exception);
    environment.add_function("strftime_now", strftime_now);
    environment.add_filter("tojson", tojson);
}

/// Whether `error` came from the template's `raise_exception`.
pub fn is_raised(error: &minijinja::Error) -> bool {
    std::error::Error::source(error).is_some_and(|source| source.is::<RaisedByTemplate>())
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message).with_source(RaisedByTemplate))
}

/// The current UTC date and time formatted with a C `strftime` format (templates put today's
/// date in the system prompt).
fn strftime_now(format: String) -> String {
    let unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    clock::format_utc(&format, unix_s)
}

/// `tojson` as transformers defines it: `json.dumps(value, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, without Jinja's HTML escaping.
fn tojson(value: Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let options = json::JsonOptions {
        indent: match indent {
            Some(indent) if indent.is_none() => None,
            Some(indent) => Some(usize::try_from(indent)?),
            None => None,
        },
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        separators: match kwargs.get::<Option<Vec<String>>>("separators")? {
            Some(pair) if pair.len() == 2 => Some((pair[0].clone(), pair[1].clone())),
            Some(_) => {
                let detail = "tojson: `separators` must be a pair of strings";
                return Err(Error::new(ErrorKind::InvalidOperation, detail));
            }
            None => None,
        },
    };
    kwargs.assert_all_used()?;
    Ok(Value::from(json::to_python_json(&value, &options)?))
}
