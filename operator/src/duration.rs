//! Go-style duration strings ("30s", "5m", "1h30m", "7d") as used in the `EmbeddingRollout` spec.
//!
//! The spec keeps the string the user wrote (so `kubectl get -o yaml` shows what they typed and a
//! bad value never makes the whole object undecodable); the decision code parses it when it needs it.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// The schema pattern: one or more `<number><unit>` groups, or a bare `0`.
/// Units: `ms`, `s`, `m`, `h`, `d` (a day is 24 h; Go has no `d`, Kubernetes users expect it).
pub const PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+)$";

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?}: expected e.g. 30s, 5m, 1h30m, 7d")]
    Invalid(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses `30s`, `5m`, `48h`, `7d`, `1h30m`, `1.5h`, `250ms`, `0`.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid = || DurationError::Invalid(input.to_string());
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_nanos: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number = &s[start..i];
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return Err(invalid());
        }
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_nanos: u128 = match &s[unit_start..i] {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "d" => 86_400 * 1_000_000_000,
            _ => return Err(invalid()),
        };
        total_nanos = total_nanos
            .checked_add(scale(number, unit_nanos).ok_or_else(invalid)?)
            .ok_or_else(|| DurationError::Overflow(input.to_string()))?;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(input.to_string()))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// `number` (digits with at most one '.') times `unit_nanos`, exactly, in integer arithmetic.
fn scale(number: &str, unit_nanos: u128) -> Option<u128> {
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if frac.contains('.') {
        return None;
    }
    let int: u128 = int.parse().ok()?;
    let mut nanos = int.checked_mul(unit_nanos)?;
    // Only the first 18 fractional digits can matter below a nanosecond for any unit here.
    let frac = &frac[..frac.len().min(18)];
    if !frac.is_empty() {
        let digits: u128 = frac.parse().ok()?;
        let denom = 10u128.pow(frac.len() as u32);
        nanos = nanos.checked_add(digits.checked_mul(unit_nanos)? / denom)?;
    }
    Some(nanos)
}

/// Formats a duration the short way (`90s` -> `1m30s`), for messages and defaults.
pub fn format(d: Duration) -> String {
    let mut secs = d.as_secs();
    let millis = d.subsec_millis();
    if secs == 0 && millis == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    if secs > 0 {
        out.push_str(&format!("{secs}s"));
    }
    if millis > 0 {
        out.push_str(&format!("{millis}ms"));
    }
    out
}

/// A duration as written in the spec. Deserialises any string (validation is the schema's job,
/// and the decision reports an unparsable value instead of failing to decode the object).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GoDuration(pub String);

impl GoDuration {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parsed value.
    pub fn parse(&self) -> Result<Duration, DurationError> {
        parse(&self.0)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for GoDuration {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl JsonSchema for GoDuration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": PATTERN,
            "description": "A Go-style duration: 30s, 5m, 48h, 7d, 1h30m (units ms, s, m, h, d)."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_users_write() {
        let cases = [
            ("30s", 30),
            ("5m", 300),
            ("48h", 48 * 3600),
            ("7d", 7 * 86_400),
            ("1h30m", 5400),
            ("1d12h", 36 * 3600),
            ("0", 0),
            ("0s", 0),
            ("90s", 90),
        ];
        for (input, secs) in cases {
            assert_eq!(parse(input), Ok(Duration::from_secs(secs)), "{input}");
        }
    }

    #[test]
    fn parses_fractions_and_milliseconds_exactly() {
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m0.25s"), Ok(Duration::from_millis(60_250)));
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        for bad in [
            "", "5", "m", "5x", "-5m", "5 m", "1.h", ".5h", "1..5h", "5mm", "h5", "1h-30m", "1us",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        assert!(matches!(
            parse("999999999999999999999999d"),
            Err(DurationError::Invalid(_)) | Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse("99999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_short() {
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format(Duration::ZERO), "0s");
    }

    #[test]
    fn formatted_values_parse_back() {
        for secs in [1u64, 59, 60, 61, 3599, 3600, 86_399, 86_400, 1_000_000] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
