//! Endpoint lists from outside: the endpoints file (YAML and JSON) and etcd records. A valid
//! file loads exactly what it lists; any change to it is either a valid file or rejected with
//! the path named, and a rejected reload keeps the last good endpoints.

use std::{collections::BTreeMap, path::Path};

use mesh::core::discover::{DiscoveryError, EndpointSource, FileSource};
use proptest::prelude::*;

use super::{cases, mutate, mutation};

/// One generated endpoint: port (unique within its service), weight, labels, identity.
#[derive(Clone, Debug)]
struct Ep {
    port: u16,
    weight: Option<u32>,
    labels: BTreeMap<String, String>,
    identity: Option<String>,
}

/// Services (lowercase `name:port`) and their endpoints.
type Services = BTreeMap<String, Vec<Ep>>;

fn services() -> impl Strategy<Value = Services> {
    let ep = (
        prop::option::of(1u32..1000),
        prop::collection::btree_map("[a-z][a-z0-9-]{0,8}", "[a-zA-Z0-9._-]{0,8}", 0..3),
        prop::option::of(
            "[a-z]{1,8}".prop_map(|sa| format!("spiffe://cluster.local/ns/default/sa/{sa}")),
        ),
    );
    let eps = prop::collection::btree_map(1u16..=u16::MAX, ep, 1..6).prop_map(|m| {
        m.into_iter()
            .map(|(port, (weight, labels, identity))| Ep {
                port,
                weight,
                labels,
                identity,
            })
            .collect::<Vec<_>>()
    });
    prop::collection::btree_map(
        "[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z]{1,6})?:[1-9][0-9]{0,3}",
        eps,
        0..4,
    )
}

fn yaml(s: &Services) -> String {
    if s.is_empty() {
        return "services: {}\n".into();
    }
    let mut out = String::from("# generated\nservices:\n");
    for (name, eps) in s {
        out.push_str(&format!("  {name}:\n"));
        for e in eps {
            out.push_str(&format!("    - address: 127.0.0.1:{}\n", e.port));
            if let Some(w) = e.weight {
                out.push_str(&format!("      weight: {w}\n"));
            }
            if !e.labels.is_empty() {
                out.push_str("      labels:\n");
                for (k, v) in &e.labels {
                    out.push_str(&format!(
                        "        {k}: {}\n",
                        serde_json::to_string(v).unwrap()
                    ));
                }
            }
            if let Some(id) = &e.identity {
                out.push_str(&format!("      identity: {id}\n"));
            }
        }
    }
    out
}

fn json(s: &Services) -> String {
    let services: serde_json::Map<String, serde_json::Value> = s
        .iter()
        .map(|(name, eps)| {
            let eps = eps
                .iter()
                .map(|e| {
                    let mut o = serde_json::json!({"address": format!("127.0.0.1:{}", e.port), "labels": e.labels});
                    if let Some(w) = e.weight {
                        o["weight"] = w.into();
                    }
                    if let Some(id) = &e.identity {
                        o["identity"] = id.clone().into();
                    }
                    o
                })
                .collect();
            (name.clone(), serde_json::Value::Array(eps))
        })
        .collect();
    serde_json::json!({ "services": services }).to_string()
}

/// Endpoints by service, as (port, weight, labels, identity), sorted.
type Held = BTreeMap<String, Vec<(u16, u32, String, Option<String>)>>;

/// What a source holds now: endpoints by service, as (port, weight, labels, identity).
fn held(source: &FileSource) -> Held {
    source
        .services()
        .into_iter()
        .map(|name| {
            let snap = source.subscribe(&name).snapshot();
            let mut eps: Vec<_> = snap
                .endpoints
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    let labels: Vec<String> =
                        e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    (
                        e.addr.port(),
                        e.weight,
                        labels.join(","),
                        e.identity.as_ref().map(|i| i.to_string()),
                    )
                })
                .collect();
            eps.sort();
            (name.to_string(), eps)
        })
        .collect()
}

fn expected(s: &Services) -> Held {
    s.iter()
        .map(|(name, eps)| {
            let mut eps: Vec<_> = eps
                .iter()
                .map(|e| {
                    let labels: Vec<String> =
                        e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    (
                        e.port,
                        e.weight.unwrap_or(1),
                        labels.join(","),
                        e.identity.clone(),
                    )
                })
                .collect();
            eps.sort();
            (name.clone(), eps)
        })
        .collect()
}

/// A source opened on a valid file that lists `base`, for reloads to be tried against.
fn open(dir: &Path, name: &str, text: &str) -> (std::path::PathBuf, FileSource) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let source = FileSource::open(&path).expect("base file loads");
    (path, source)
}

fn base() -> Services {
    let ep = Ep {
        port: 9080,
        weight: Some(2),
        labels: [("version".into(), "v1".into())].into(),
        identity: None,
    };
    [("base.default:9080".to_string(), vec![ep])].into()
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn generated_files_load_exactly_what_they_list(s in services()) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text, base) in [("e.yaml", yaml(&s), yaml(&base())), ("e.json", json(&s), json(&base()))] {
            let (path, source) = open(dir.path(), name, &base);
            std::fs::write(&path, &text).unwrap();
            source.reload().map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(held(&source), expected(&s), "{}", text);
        }
    }

    #[test]
    fn a_mutated_file_is_valid_or_rejected_and_the_last_good_set_stays(
        s in services(),
        mutations in prop::collection::vec(mutation(), 1..4),
        as_json in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (name, mut text) = if as_json { ("e.json", json(&s)) } else { ("e.yaml", yaml(&s)) };
        let (path, source) = open(dir.path(), name, &text);
        let good = held(&source);
        for m in &mutations {
            text = mutate(&text, m);
        }
        std::fs::write(&path, &text).unwrap();
        match source.reload() {
            Ok(()) => {
                // Whatever was accepted holds real endpoints: ports, weights ≥ 1.
                for eps in held(&source).values() {
                    prop_assert!(eps.iter().all(|(port, weight, ..)| *port != 0 && *weight >= 1));
                }
            }
            Err(DiscoveryError::File { path: p, reason }) => {
                prop_assert_eq!(&p, &path);
                prop_assert!(!reason.is_empty());
                prop_assert_eq!(held(&source), good, "a rejected reload changed the endpoints");
                prop_assert!(source.last_error().is_some());
            }
            Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
        }
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use mesh::etcd::{EndpointRecord, parse_record, record_key};
    use proptest::prelude::*;

    use super::cases;

    proptest! {
        #![proptest_config(cases(4096))]

        #[test]
        fn any_key_and_value_is_a_record_or_a_typed_error(
            key in prop_oneof![any::<String>(), "/p/[a-z.:0-9/ ]{0,20}"],
            value in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                "\\{\"address\": ?\"[0-9a-f.:]{0,16}\", ?\"port\": ?-?[0-9]{1,6}(, ?\"weight\": ?-?[0-9]{1,11})?(, ?\"identity\": ?\"[a-z:/.]{0,20}\")?\\}".prop_map(String::into_bytes),
            ],
        ) {
            if let Ok((service, endpoint)) = parse_record("/p/", &key, &value) {
                prop_assert!(key.starts_with("/p/"));
                prop_assert!(service.port() != 0);
                prop_assert!(endpoint.addr.port() != 0 && endpoint.weight >= 1);
            }
        }

        #[test]
        fn written_records_read_back(
            a in any::<[u8; 4]>(),
            port in 1u16..,
            weight in prop::option::of(1u32..),
            labels in prop::collection::btree_map("[a-z]{1,6}", "[a-z0-9]{0,6}", 0..3),
            instance in "[a-zA-Z0-9_.-]{1,20}",
        ) {
            let mut r = EndpointRecord::new(std::net::SocketAddr::from((a, port)));
            r.weight = weight;
            r.labels = labels.clone();
            let name = "ratings.default:9080".parse().unwrap();
            let key = record_key("/mesh/services/", &name, &instance);
            let (service, ep) = parse_record("/mesh/services/", &key, &serde_json::to_vec(&r).unwrap()).unwrap();
            prop_assert_eq!(service, name);
            prop_assert_eq!(ep.addr, std::net::SocketAddr::from((a, port)));
            prop_assert_eq!(ep.weight, weight.unwrap_or(1));
            for (k, v) in &labels {
                prop_assert_eq!(ep.labels.get(k), Some(v.as_str()));
            }
        }
    }
}
