//! The `grpc-timeout` header: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`), per
//! gRPC over HTTP/2.
//!
//! ```
//! use std::time::Duration;
//! use mesh_tonic::grpc_timeout::{decode, encode};
//!
//! assert_eq!(encode(Duration::from_millis(250)), "250000u");
//! assert_eq!(decode("250m"), Some(Duration::from_millis(250)));
//! assert_eq!(decode(encode(Duration::from_secs(3600)).as_str()), Some(Duration::from_secs(3600)));
//! assert_eq!(decode("123456789S"), None); // 9 digits
//! ```

use std::time::Duration;

/// The header's name.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";
/// The header's name, ready for header map lookups.
pub static GRPC_TIMEOUT_HEADER: http::HeaderName = http::HeaderName::from_static(GRPC_TIMEOUT);

const MAX_VALUE: u128 = 99_999_999;

/// The header value for `timeout`: the finest unit whose value fits in 8 digits, rounded up to
/// a whole unit. The value is then at least 99,999 units (or the timeout is exact), so the
/// error is under one part in 100,000; timeouts over 99,999,999 hours are capped.
pub fn encode(timeout: Duration) -> String {
    let nanos = timeout.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        let value = nanos.div_ceil(per);
        if value <= MAX_VALUE {
            return format!("{value}{unit}");
        }
    }
    format!("{MAX_VALUE}H")
}

/// The duration a header value stands for, or `None` when it is malformed.
pub fn decode(value: &str) -> Option<Duration> {
    // Bytes, not chars: the value comes from the network and may end in any UTF-8 (or other)
    // byte; splitting a `str` at `len - 1` would panic inside a multi-byte character.
    let (&unit, digits) = value.as_bytes().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_finest_unit_that_fits() {
        assert_eq!(encode(Duration::from_nanos(5)), "5n");
        assert_eq!(encode(Duration::from_millis(100)), "100000u");
        assert_eq!(encode(Duration::from_millis(99)), "99000000n");
        assert_eq!(encode(Duration::from_secs(1)), "1000000u");
        assert_eq!(encode(Duration::ZERO), "0n");
        assert_eq!(encode(Duration::from_secs(u64::MAX)), "99999999H");
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "m",
            "10",
            "10x",
            "-1S",
            "1.5S",
            "123456789n",
            "1é",
            "é",
            "1\u{10FFFF}",
            "٣S",
        ] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        assert_eq!(decode("1H"), Some(Duration::from_secs(3600)));
    }
}
