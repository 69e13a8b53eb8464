//! Connector options from a `WITH (...)` clause: typed access, and an error for every option
//! that no one asked for, so that a typo is a CREATE-time error that names the option.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Result};

/// The `WITH (key = value, ...)` options of one CREATE statement, for one connector.
///
/// Readers `take` the options they understand; [`Options::finish`] then rejects the rest.
#[derive(Debug, Clone, Default)]
pub struct Options {
    connector: String,
    values: BTreeMap<String, String>,
}

impl Options {
    /// Options for `connector`. Keys are matched case-insensitively.
    pub fn new(
        connector: impl Into<String>,
        values: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Self {
            connector: connector.into(),
            values: values
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        }
    }

    /// The connector these options are for.
    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// Whether an option is present (without taking it).
    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// Takes a string option.
    pub fn take_string(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    /// Takes a required string option.
    ///
    /// # Errors
    /// When the option is absent.
    pub fn require_string(&mut self, key: &str) -> Result<String> {
        match self.take_string(key) {
            Some(v) => Ok(v),
            None if self.values.is_empty() => Err(Error::option(
                &self.connector,
                format!("missing required option '{key}'"),
            )),
            None => {
                let given: Vec<String> = self.values.keys().map(|k| format!("'{k}'")).collect();
                Err(Error::option(
                    &self.connector,
                    format!(
                        "missing required option '{key}' (other options given: {})",
                        given.join(", ")
                    ),
                ))
            }
        }
    }

    /// Takes an unsigned integer option.
    ///
    /// # Errors
    /// When the value is not a non-negative integer.
    pub fn take_u64(&mut self, key: &str) -> Result<Option<u64>> {
        match self.values.remove(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                Error::option(
                    &self.connector,
                    format!("option '{key}' must be a non-negative integer, got '{v}'"),
                )
            }),
        }
    }

    /// Takes a boolean option (`true`/`false`).
    ///
    /// # Errors
    /// When the value is not a boolean.
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.values.remove(key) {
            None => Ok(None),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(Some(true)),
                "false" | "0" | "no" => Ok(Some(false)),
                _ => Err(Error::option(
                    &self.connector,
                    format!("option '{key}' must be true or false, got '{v}'"),
                )),
            },
        }
    }

    /// Takes a single-character option, such as a delimiter.
    ///
    /// # Errors
    /// When the value is not exactly one ASCII character.
    pub fn take_char(&mut self, key: &str) -> Result<Option<u8>> {
        match self.values.remove(key) {
            None => Ok(None),
            Some(v) => {
                let v2 = if v == "\\t" {
                    "\t".to_string()
                } else {
                    v.clone()
                };
                match v2.as_bytes() {
                    [c] if c.is_ascii() => Ok(Some(*c)),
                    _ => Err(Error::option(
                        &self.connector,
                        format!("option '{key}' must be one character, got '{v}'"),
                    )),
                }
            }
        }
    }

    /// Takes a duration option: a number of milliseconds, or a number with a unit
    /// (`ms`, `s`, `m`, `h`), such as `'100ms'` or `'10s'`.
    ///
    /// # Errors
    /// When the value is not a duration.
    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        match self.values.remove(key) {
            None => Ok(None),
            Some(v) => parse_duration(&v).map(Some).ok_or_else(|| {
                Error::option(
                    &self.connector,
                    format!("option '{key}' must be a duration such as '100ms' or '5s', got '{v}'"),
                )
            }),
        }
    }

    /// Takes an option holding a positive number of seconds (`'30'`, `'0.5'`) or a
    /// duration (`'10s'`, `'5m'`).
    ///
    /// # Errors
    /// When the value is neither, or not positive.
    pub fn take_seconds(&mut self, key: &str) -> Result<Option<Duration>> {
        let Some(value) = self.take_string(key) else {
            return Ok(None);
        };
        let parsed = match value.trim().parse::<f64>() {
            Ok(secs) if secs > 0.0 => Duration::try_from_secs_f64(secs).ok(),
            Ok(_) => None,
            Err(_) => parse_duration(&value).filter(|d| !d.is_zero()),
        };
        parsed.map(Some).ok_or_else(|| {
            Error::option(
                &self.connector,
                format!("option '{key}' must be a positive number of seconds, got '{value}'"),
            )
        })
    }

    /// Takes an option whose value must be one of `allowed`.
    ///
    /// # Errors
    /// When the value is not one of `allowed`.
    pub fn take_choice(&mut self, key: &str, allowed: &[&str]) -> Result<Option<String>> {
        match self.values.remove(key) {
            None => Ok(None),
            Some(v) => {
                let lower = v.to_ascii_lowercase();
                if allowed.contains(&lower.as_str()) {
                    Ok(Some(lower))
                } else {
                    Err(Error::option(
                        &self.connector,
                        format!(
                            "option '{key}' must be one of {}, got '{v}'",
                            allowed.join(", ")
                        ),
                    ))
                }
            }
        }
    }

    /// Takes a comma-separated list of names (`key = 'a, b'`), trimmed, empty ones dropped;
    /// empty when the option is absent.
    pub fn take_list(&mut self, key: &str) -> Vec<String> {
        self.values
            .remove(key)
            .map(|v| {
                v.split(',')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Takes every option whose key starts with `prefix`, prefix included in the key.
    pub fn take_prefixed(&mut self, prefix: &str) -> Vec<(String, String)> {
        let keys: Vec<String> = self
            .values
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.values.remove(&k).map(|v| (k, v)))
            .collect()
    }

    /// Checks that every option was understood.
    ///
    /// # Errors
    /// Names each option nobody took.
    pub fn finish(self) -> Result<()> {
        if self.values.is_empty() {
            return Ok(());
        }
        let unknown: Vec<String> = self.values.keys().map(|k| format!("'{k}'")).collect();
        Err(Error::option(
            &self.connector,
            format!(
                "unknown option{} {}",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", ")
            ),
        ))
    }
}

/// Parses `'250ms'`, `'5s'`, `'2m'`, `'1h'` or a bare number of milliseconds.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim().to_ascii_lowercase();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    if !num.is_finite() || num < 0.0 {
        return None;
    }
    let secs = match unit.trim() {
        "" | "ms" => num / 1000.0,
        "s" | "sec" | "second" | "seconds" => num,
        "m" | "min" | "minute" | "minutes" => num * 60.0,
        "h" | "hour" | "hours" => num * 3600.0,
        _ => return None,
    };
    // `try_`: a value too large for a Duration is an error, not a panic.
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> Options {
        Options::new(
            "file",
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn unknown_options_are_named() {
        let mut o = opts(&[("path", "x"), ("formt", "csv")]);
        assert_eq!(o.take_string("path").as_deref(), Some("x"));
        let err = o.finish().unwrap_err().to_string();
        assert!(err.contains("'formt'"), "{err}");
    }

    #[test]
    fn typed_options_reject_bad_values() {
        let mut o = opts(&[("rows", "ten")]);
        assert!(
            o.take_u64("rows")
                .unwrap_err()
                .to_string()
                .contains("'rows'")
        );
        let mut o = opts(&[("linger", "250ms"), ("x", "2s")]);
        assert_eq!(
            o.take_duration("linger").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(o.take_duration("x").unwrap(), Some(Duration::from_secs(2)));
    }

    /// Regression: a duration too long for `Duration` panicked at CREATE time.
    #[test]
    fn a_duration_past_what_duration_holds_is_an_error() {
        assert_eq!(parse_duration("100000000000000000000000"), None);
        assert_eq!(parse_duration("1e400s"), None);
        let mut o = opts(&[("linger", "99999999999999999999h")]);
        let err = o.take_duration("linger").unwrap_err().to_string();
        assert!(err.contains("'linger'"), "{err}");
    }
}
