//! Header parsers: W3C `traceparent` / `tracestate` and gRPC's `grpc-timeout`.

use std::time::Duration;

use mesh::{core::trace_context::TraceContext, tonic::grpc_timeout};
use proptest::prelude::*;

use super::cases;

/// A valid `traceparent` of version 00: non-zero ids, lowercase hex.
fn traceparent() -> impl Strategy<Value = (u128, u64, u8)> {
    (1..=u128::MAX, 1..=u64::MAX, any::<u8>())
}

/// Bytes a header value can hold (visible ASCII, space, tab, obs-text).
fn header_value() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            8 => 0x20u8..0x7f,
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
        ],
        0..80,
    )
    .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

proptest! {
    #![proptest_config(cases(4096))]

    #[test]
    fn any_traceparent_and_tracestate_parse_or_fail_without_panic(
        tp in prop_oneof![header_value(), "[0-9a-f-]{50,60}", any::<String>()],
        ts in prop::option::of(any::<String>()),
    ) {
        if let Ok(ctx) = TraceContext::parse(&tp, ts.as_deref()) {
            // Whatever was accepted is written back as a valid version-00 header.
            let again = TraceContext::parse(&ctx.traceparent(), None).expect("own output parses");
            prop_assert_eq!(again.traceparent(), ctx.traceparent());
        }
        // A server reading the same headers never fails: it continues or starts a trace.
        let _ = TraceContext::parse(&tp, ts.as_deref()).ok();
    }

    #[test]
    fn valid_traceparents_read_back_their_ids(
        (trace, span, flags) in traceparent(),
        upper_version in any::<bool>(),
        tracestate in "[a-z][a-z0-9_*/-]{0,20}=[a-zA-Z0-9 !.:;]{1,20}",
    ) {
        let version = if upper_version { "cc" } else { "00" };
        let header = format!("{version}-{trace:032x}-{span:016x}-{flags:02x}");
        let header = if upper_version { format!("{header}-what-the-future-holds") } else { header };
        let ctx = TraceContext::parse(&header, Some(&tracestate)).expect("valid traceparent");
        prop_assert_eq!(ctx.traceparent(), format!("00-{trace:032x}-{span:016x}-{flags:02x}"));
        prop_assert_eq!(ctx.tracestate(), Some(tracestate.trim()).filter(|s| !s.is_empty()));
    }

    #[test]
    fn one_changed_byte_of_a_valid_traceparent_never_panics(
        (trace, span, flags) in traceparent(),
        at in 0usize..55,
        byte in any::<u8>(),
    ) {
        let mut b = format!("00-{trace:032x}-{span:016x}-{flags:02x}").into_bytes();
        b[at] = byte;
        let s = String::from_utf8_lossy(&b);
        if let Ok(ctx) = TraceContext::parse(&s, None) {
            prop_assert_eq!(ctx.traceparent().len(), 55);
        }
    }

    #[test]
    fn any_grpc_timeout_decodes_or_is_none_without_panic(v in prop_oneof![
        header_value(),
        "[0-9]{0,10}[HMSmunx\u{e9}]?",
        any::<String>(),
    ]) {
        if let Some(d) = grpc_timeout::decode(&v) {
            // Only 1–8 ASCII digits and a unit are accepted.
            let (digits, unit) = v.split_at(v.len() - 1);
            prop_assert!((1..=8).contains(&digits.len()));
            prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()));
            prop_assert!("HMSmun".contains(unit));
            prop_assert!(d <= Duration::from_secs(99_999_999 * 3600));
        }
    }

    #[test]
    fn grpc_timeouts_encode_within_8_digits_and_never_shorter(nanos in any::<u64>(), secs in 0u64..400_000_000_000) {
        for d in [Duration::from_nanos(nanos), Duration::from_secs(secs)] {
            let v = grpc_timeout::encode(d);
            let back = grpc_timeout::decode(&v).expect("own output decodes");
            prop_assert!(v.len() <= 9, "{v}");
            // Rounded up to a whole unit, or capped at the largest value the header holds.
            prop_assert!(back >= d || v == "99999999H", "{d:?} -> {v} -> {back:?}");
            // The unit chosen is the finest that fits, so the value is at least 99,999 of it.
            prop_assert!(back - d.min(back) <= d / 99_999 + Duration::from_nanos(1) || v == "99999999H");
        }
    }
}
