//! Parsing of byte sizes, CPU counts and durations given on the command line or in a spec.

use std::time::Duration;

/// A value that could not be parsed, with the syntax that would have been accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} {value:?}: expected {expected}")]
pub struct ParseError {
    what: &'static str,
    value: String,
    expected: &'static str,
}

const SIZE_SYNTAX: &str = "a whole number of bytes with an optional suffix K, M, G or T \
     (powers of 1024, for example 512M or 2G)";
/// Maximum duration accepted, 100 years: longer ones overflow clocks and mean "never".
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

const DURATION_SYNTAX: &str = "a whole number with an optional suffix ms, s, m or h \
     (seconds by default, for example 30s or 10m; at most 100 years)";
const CPUS_SYNTAX: &str = "a number of CPUs from 0.01 to 4096, for example 1 or 0.5";

fn invalid(what: &'static str, value: &str, expected: &'static str) -> ParseError {
    ParseError {
        what,
        value: value.to_owned(),
        expected,
    }
}

/// Splits "512M" into ("512", "M").
fn split_number(value: &str) -> (&str, &str) {
    let end = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    value.split_at(end)
}

/// Parses a byte size such as `512M`, `2G`, `1GiB` or `4096`.
pub fn parse_bytes(what: &'static str, value: &str) -> Result<u64, ParseError> {
    let (digits, suffix) = split_number(value.trim());
    let number: u64 = digits
        .parse()
        .map_err(|_| invalid(what, value, SIZE_SYNTAX))?;
    let shift = match suffix
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(invalid(what, value, SIZE_SYNTAX)),
    };
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| invalid(what, value, SIZE_SYNTAX))?;
    if bytes == 0 {
        return Err(invalid(what, value, SIZE_NOT_ZERO));
    }
    Ok(bytes)
}

/// The expected form named when a size is zero.
const SIZE_NOT_ZERO: &str = "more than zero bytes, such as 512M or 2G";

/// The expected form named when a duration is zero.
const DURATION_NOT_ZERO: &str =
    "more than zero, such as 500ms or 30s; omit the option for no limit";

/// Parses a duration such as `30s`, `10m`, `1h`, `500ms` or `90` (seconds).
pub fn parse_duration(what: &'static str, value: &str) -> Result<Duration, ParseError> {
    let (digits, suffix) = split_number(value.trim());
    let number: u64 = digits
        .parse()
        .map_err(|_| invalid(what, value, DURATION_SYNTAX))?;
    let duration = match suffix {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => return Err(invalid(what, value, DURATION_SYNTAX)),
    };
    if duration.is_zero() {
        return Err(invalid(what, value, DURATION_NOT_ZERO));
    }
    if duration > MAX_DURATION {
        return Err(invalid(what, value, DURATION_SYNTAX));
    }
    Ok(duration)
}

/// Parses a CPU count such as `2` or `0.5`.
pub fn parse_cpus(what: &'static str, value: &str) -> Result<f64, ParseError> {
    match value.trim().parse::<f64>() {
        Ok(cpus) if (0.01..=4096.0).contains(&cpus) => Ok(cpus),
        _ => Err(invalid(what, value, CPUS_SYNTAX)),
    }
}

/// Formats a byte count for people, rounded to one decimal, such as "12.3M".
pub fn format_bytes_short(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        if bytes >= 1 << shift {
            return format!("{:.1}{unit}", bytes as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{bytes}B")
}

/// Formats a byte count the way [`parse_bytes`] reads it, for messages and help text.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_accept_suffixes() {
        assert_eq!(parse_bytes("memory", "4096"), Ok(4096));
        assert_eq!(parse_bytes("memory", "512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("memory", "512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("memory", "2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("memory", "2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("memory", "64KB"), Ok(64 << 10));
    }

    #[test]
    fn bytes_reject_garbage_zero_and_overflow() {
        for bad in ["", "lots", "12X", "-5M", "0", "1.5G", "99999999999T"] {
            let error = parse_bytes("memory", bad).unwrap_err();
            assert!(
                error.to_string().contains("invalid memory"),
                "{bad}: {error}"
            );
        }
        let zero = parse_bytes("memory", "0M").unwrap_err().to_string();
        assert!(zero.contains("more than zero bytes"), "{zero}");
    }

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("timeout", "90"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("timeout", "500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("timeout", "2m"),
            Ok(Duration::from_secs(120))
        );
        assert_eq!(
            parse_duration("timeout", "1h"),
            Ok(Duration::from_secs(3600))
        );
    }

    #[test]
    fn durations_reject_bad_units() {
        for bad in ["", "0", "5 days", "1d", "s"] {
            assert!(parse_duration("timeout", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_past_a_century_are_rejected() {
        assert!(parse_duration("ttl", "876000h").is_ok());
        for bad in ["18446744073709551615s", "5124096h"] {
            assert!(parse_duration("ttl", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_accept_fractions_only_in_range() {
        assert_eq!(parse_cpus("cpus", "0.5"), Ok(0.5));
        assert_eq!(parse_cpus("cpus", "2"), Ok(2.0));
        for bad in ["0", "-1", "NaN", "inf", "two"] {
            assert!(parse_cpus("cpus", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for bytes in [4096, 512 << 20, 2 << 30, 1000] {
            assert_eq!(parse_bytes("memory", &format_bytes(bytes)), Ok(bytes));
        }
    }
}
