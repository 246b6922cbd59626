//! Durations in configuration, written the way Istio and Kubernetes documents write them.
//!
//! Istio's resources (`timeout: 10s`, `baseEjectionTime: 3m`, `connectTimeout: 30ms`) use Go's
//! duration syntax: one or more decimal numbers, each with a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`,
//! `h`), e.g. `1.5s` or `1h30m`. [`parse`] accepts exactly that (no sign), [`format()`] writes the
//! shortest exact form, and [`serde`](mod@self::serde) plugs both into `#[serde(with = ...)]`.
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::duration;
//!
//! assert_eq!(duration::parse("1.5s").unwrap(), Duration::from_millis(1500));
//! assert_eq!(duration::parse("1m30s").unwrap(), Duration::from_secs(90));
//! assert_eq!(duration::format(Duration::from_millis(30)), "30ms");
//! assert!(duration::parse("10").unwrap_err().to_string().contains("unit"));
//! ```

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. \"250ms\", \"1.5s\", \"1m30s\")")]
pub struct DurationError {
    /// The rejected text.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a Go-style duration (`"300ms"`, `"1.5s"`, `"2h45m"`). `"0"` is accepted as zero.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(fail("empty"));
    }
    if s.starts_with(['-', '+']) {
        return Err(fail("durations must not be signed"));
    }
    let mut rest = s;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(fail("expected a number"));
        }
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(fail("missing unit")),
            _ => return Err(fail("unknown unit (use ns, us, ms, s, m or h)")),
        };
        let (int, frac) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(fail("malformed number"));
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| fail("number too large"))?
        };
        let mut nanos = int
            .checked_mul(unit_nanos)
            .ok_or_else(|| fail("number too large"))?;
        // Fractional part: scale digit by digit, dropping precision below a nanosecond.
        let mut scale = unit_nanos;
        for d in frac.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos += u128::from(d - b'0') * scale;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| fail("number too large"))?;
        rest = after;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| fail("number too large"))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Formats a duration exactly, in Go's style: whole hours or minutes when it is a whole number
/// of them (`"2m"`), otherwise one unit (`s`, `ms`, `us`, `ns`) with a decimal fraction as needed
/// (`"1.5s"`, `"30ms"`, `"98.194772ms"`). [`parse`] reads every output back exactly.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (unit, size) in [("h", 3_600_000_000_000u128), ("m", 60_000_000_000)] {
        if nanos % size == 0 {
            return format!("{}{unit}", nanos / size);
        }
    }
    let (unit, size, digits) = if nanos >= 1_000_000_000 {
        ("s", 1_000_000_000u128, 9)
    } else if nanos >= 1_000_000 {
        ("ms", 1_000_000, 6)
    } else if nanos >= 1_000 {
        ("us", 1_000, 3)
    } else {
        return format!("{nanos}ns");
    };
    let (whole, frac) = (nanos / size, nanos % size);
    if frac == 0 {
        return format!("{whole}{unit}");
    }
    let frac = format!("{frac:0digits$}");
    format!("{whole}.{}{unit}", frac.trim_end_matches('0'))
}

/// `#[serde(with = "mesh_core::duration::serde")]` for `Duration` fields.
pub mod serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as a Go-style duration string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    /// Deserializes a Go-style duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "mesh_core::duration::serde_opt")]` for `Option<Duration>` fields.
pub mod serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `Some` as a duration string and `None` as null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format(*d)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes an optional duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("10ns").unwrap(), Duration::from_nanos(10));
        assert_eq!(parse("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse("250µs").unwrap(), Duration::from_micros(250));
        assert_eq!(parse("30ms").unwrap(), Duration::from_millis(30));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("3m").unwrap(), Duration::from_secs(180));
        assert_eq!(parse("1h30m10s").unwrap(), Duration::from_secs(5410));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in [
            "",
            "10",
            "s",
            "-1s",
            "1.2.3s",
            "1d",
            "1sm",
            "99999999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_round_trip() {
        for d in [
            Duration::from_millis(30),
            Duration::from_millis(1500),
            Duration::from_secs(120),
            Duration::from_nanos(7),
            Duration::from_micros(3),
            Duration::from_secs(7200),
        ] {
            assert_eq!(parse(&format(d)).unwrap(), d, "{}", format(d));
        }
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_nanos(98_194_772)), "98.194772ms");
        assert_eq!(format(Duration::from_secs(120)), "2m");
        assert_eq!(
            parse(&format(Duration::from_nanos(98_194_772))).unwrap(),
            Duration::from_nanos(98_194_772)
        );
    }
}
