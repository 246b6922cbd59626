//! Names and values read from config and from peers: SPIFFE IDs (certificate SANs, policy
//! principals), durations (every timeout in config) and service names (`host:port`).

use std::time::Duration;

use mesh::core::{ServiceName, duration, identity::SpiffeId};
use proptest::prelude::*;

use super::cases;

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,12}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

proptest! {
    #![proptest_config(cases(4096))]

    #[test]
    fn any_string_is_a_spiffe_id_or_a_typed_error(s in prop_oneof![
        any::<String>(),
        "spiffe://[a-z0-9.:@_-]{0,10}(/[A-Za-z0-9.%?#_-]{0,6}){0,4}/?",
        "(SPIFFE|spiffe|spiffe:/)[ -~]{0,30}",
    ]) {
        match SpiffeId::parse(&s) {
            Ok(id) => {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), s);
            }
            Err(e) => {
                prop_assert!(!e.reason.is_empty());
                // The error quotes at most 256 bytes of the input (and is valid UTF-8).
                prop_assert!(e.input.len() <= 256 + '…'.len_utf8());
            }
        }
    }

    #[test]
    fn generated_spiffe_ids_parse_and_keep_their_parts(
        td in "[a-z0-9][a-z0-9._-]{0,20}",
        path in prop::collection::vec(segment(), 0..5),
        istio in prop::option::of((segment(), segment())),
    ) {
        let path: String = match &istio {
            Some((ns, sa)) => format!("/ns/{ns}/sa/{sa}"),
            None => path.iter().map(|s| format!("/{s}")).collect(),
        };
        let s = format!("spiffe://{td}{path}");
        let id = SpiffeId::parse(&s).expect("valid SPIFFE ID");
        prop_assert_eq!(id.trust_domain(), td.as_str());
        prop_assert_eq!(id.path(), path.as_str());
        if let Some((ns, sa)) = &istio {
            prop_assert_eq!(id.namespace(), Some(ns.as_str()));
            prop_assert_eq!(id.service_account(), Some(sa.as_str()));
        }
        // Serde reads what it writes.
        let json = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
    }

    #[test]
    fn any_string_is_a_duration_or_a_typed_error(s in prop_oneof![
        any::<String>(),
        "[0-9.]{0,25}(h|m|s|ms|us|µs|ns|d|)",
        "([0-9]{1,12}(\\.[0-9]{0,12})?(h|m|s|ms|us|ns)){1,4}",
        "[-+ ]?[0-9]{1,40}s",
    ]) {
        if let Err(e) = duration::parse(&s) {
            prop_assert_eq!(e.input, s);
        }
    }

    #[test]
    fn every_duration_formats_and_parses_back_exactly(secs in 0u64..10_000_000_000, nanos in 0u32..1_000_000_000) {
        let d = Duration::new(secs, nanos);
        let text = duration::format(d);
        prop_assert_eq!(duration::parse(&text), Ok(d), "{}", text);
        // Whole units too (Istio writes `5s`, `100ms`, `1h`).
        for unit in [Duration::from_millis(1), Duration::from_secs(1), Duration::from_secs(3600)] {
            let d = unit * (secs % 100_000) as u32;
            prop_assert_eq!(duration::parse(&duration::format(d)), Ok(d));
        }
    }

    #[test]
    fn any_string_is_a_service_name_or_a_typed_error(s in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9.-]{0,20}:[0-9]{0,7}",
        "\\[[0-9a-f:]{0,20}\\](:[0-9]{1,6})?",
    ]) {
        if let Ok(name) = ServiceName::parse(&s) {
            prop_assert!(name.port() != 0);
            prop_assert_eq!(name.as_str(), format!("{}:{}", name.host(), name.port()));
            // A parsed name parses to itself.
            prop_assert_eq!(ServiceName::parse(name.as_str()).unwrap(), name);
        }
    }
}
