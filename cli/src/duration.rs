//! Human durations on the command line (`90s`, `10m`, `2h30m`, `1d`, or bare seconds).
//!
//! The wire wants whole seconds, so the grammar has no fractions and no sub-second units: an
//! operator typing `1.5h` or `500ms` for a TTL has made a mistake worth an error, not a rounding.

use std::fmt;
use std::time::Duration;

/// Why a string is not a duration. clap prefixes the message with the flag and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Nothing was given.
    Empty,
    /// A character that is neither a digit nor a unit (`s m h d`), or a unit with no number.
    Malformed,
    /// A unit after a larger or equal one (`30m2h`, `1h1h`): almost surely a typo.
    UnitOrder,
    /// More seconds than the wire's signed 64-bit seconds field can carry.
    TooLarge,
    /// Zero where a positive duration is needed (timeouts).
    Zero,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "duration is empty",
            Self::Malformed => {
                "expected a duration such as 90s, 10m, 1h, 2h30m, 1d, or a number of seconds"
            }
            Self::UnitOrder => "duration units must go from largest to smallest, each at most once",
            Self::TooLarge => "duration is too large",
            Self::Zero => "duration must be greater than zero",
        })
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration. A bare number is seconds; otherwise one or more `<number><unit>` parts
/// with units `d`, `h`, `m`, `s` in that order. Zero is allowed: TTL flags use it for "default".
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return checked(parse_number(s)?);
    }
    let mut total: u64 = 0;
    // Rank of the previous unit; each next unit must be strictly smaller.
    let mut last_rank = u8::MAX;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Malformed);
        }
        let (number, tail) = rest.split_at(digits);
        let mut chars = tail.chars();
        let (rank, unit_secs) = match chars.next() {
            Some('d') => (3, 86_400),
            Some('h') => (2, 3_600),
            Some('m') => (1, 60),
            Some('s') => (0, 1),
            _ => return Err(DurationError::Malformed),
        };
        if rank >= last_rank {
            return Err(DurationError::UnitOrder);
        }
        last_rank = rank;
        let part = parse_number(number)?
            .checked_mul(unit_secs)
            .ok_or(DurationError::TooLarge)?;
        total = total.checked_add(part).ok_or(DurationError::TooLarge)?;
        rest = chars.as_str();
    }
    checked(total)
}

/// Like [`parse`], but rejects zero: a zero timeout would fail every call before it starts.
pub fn parse_positive(s: &str) -> Result<Duration, DurationError> {
    let d = parse(s)?;
    if d.is_zero() {
        return Err(DurationError::Zero);
    }
    Ok(d)
}

/// Whole seconds as the wire's `int64` fields want them.
pub fn secs_i64(d: Duration) -> i64 {
    // Invariant: every Duration we hold came from `parse`, which caps at i64::MAX seconds;
    // saturating keeps this total even if a caller builds one some other way.
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Formats seconds compactly for humans (`3600` → `1h`, `5400` → `1h30m`, `0` → `0s`).
pub fn format_secs(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

fn parse_number(s: &str) -> Result<u64, DurationError> {
    // Only digits reach here, so the one failure left is overflow.
    s.parse::<u64>().map_err(|_| DurationError::TooLarge)
}

fn checked(secs: u64) -> Result<Duration, DurationError> {
    if i64::try_from(secs).is_err() {
        return Err(DurationError::TooLarge);
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_forms() {
        let cases = [
            ("90s", 90),
            ("10m", 600),
            ("1h", 3_600),
            ("2h30m", 9_000),
            ("1d", 86_400),
            ("1d2h3m4s", 93_784),
            ("600", 600),
            ("0", 0),
            ("0s", 0),
            (" 5m ", 300),
        ];
        for (input, secs) in cases {
            assert_eq!(
                parse(input),
                Ok(Duration::from_secs(secs)),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn rejects_garbage() {
        let cases = [
            ("", DurationError::Empty),
            ("  ", DurationError::Empty),
            ("abc", DurationError::Malformed),
            ("1x", DurationError::Malformed),
            ("h", DurationError::Malformed),
            ("1.5h", DurationError::Malformed),
            ("-5s", DurationError::Malformed),
            ("500ms", DurationError::Malformed),
            ("10m5", DurationError::Malformed),
            ("1h 30m", DurationError::Malformed),
            ("30m2h", DurationError::UnitOrder),
            ("1h1h", DurationError::UnitOrder),
            ("99999999999999999999", DurationError::TooLarge),
            ("9223372036854775808", DurationError::TooLarge),
            ("999999999999999999d", DurationError::TooLarge),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Err(want), "input {input:?}");
        }
        assert_eq!(
            parse("9223372036854775807"),
            Ok(Duration::from_secs(i64::MAX as u64))
        );
    }

    #[test]
    fn positive_rejects_zero() {
        assert_eq!(parse_positive("0s"), Err(DurationError::Zero));
        assert_eq!(parse_positive("10s"), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn formats_and_converts() {
        assert_eq!(format_secs(0), "0s");
        assert_eq!(format_secs(45), "45s");
        assert_eq!(format_secs(3_600), "1h");
        assert_eq!(format_secs(5_400), "1h30m");
        assert_eq!(format_secs(93_784), "1d2h3m4s");
        assert_eq!(secs_i64(Duration::from_secs(300)), 300);
        assert_eq!(secs_i64(Duration::from_secs(u64::MAX)), i64::MAX);
        for s in [1, 59, 61, 3_599, 86_401, 1_000_000] {
            assert_eq!(parse(&format_secs(s)), Ok(Duration::from_secs(s)));
        }
    }
}
