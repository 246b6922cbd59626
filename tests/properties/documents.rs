//! Istio documents: generated VirtualService + DestinationRule + ServiceEntry sets are accepted
//! (as YAML and as JSON); every document mutated at one value is accepted or rejected with the
//! file, the document and a field path; any change to the text never panics and every error
//! names the file.

use mesh::core::config::{ConfigErrors, ConfigSet, LoadOptions, Workload, load_texts};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::{cases, mutate, mutation};

fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u32..10_000).prop_map(|n| format!("{n}ms")),
        (1u32..120).prop_map(|n| format!("{n}s")),
        (1u32..1000, 1u32..1000).prop_map(|(s, f)| format!("{s}.{f:03}s")),
        (1u32..10).prop_map(|n| format!("{n}m")),
    ]
}

fn string_match() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-zA-Z0-9 _./-]{1,12}".prop_map(|s| json!({ "exact": s })),
        "[a-zA-Z0-9_./-]{1,12}".prop_map(|s| json!({ "prefix": s })),
        prop_oneof![
            Just("v[0-9]+"),
            Just(".*jason.*"),
            Just("(a|b)c?"),
            Just("[[:alpha:]]+"),
            Just("\\d{1,3}")
        ]
        .prop_map(|s| json!({ "regex": s })),
    ]
}

/// `n` subset names and weights over them summing to 100.
fn split(n: usize) -> impl Strategy<Value = Vec<(usize, u32)>> {
    prop::collection::vec(0u32..=100, n).prop_map(move |mut w| {
        let total: u32 = w.iter().sum();
        match 100u32.checked_div(total) {
            // All zero: one destination takes everything.
            None => w[0] = 100,
            Some(_) => {
                let mut acc = 0;
                for x in w.iter_mut() {
                    *x = *x * 100 / total;
                    acc += *x;
                }
                w[0] += 100 - acc;
            }
        }
        w.into_iter().enumerate().filter(|(_, x)| *x > 0).collect()
    })
}

fn http_route(subsets: usize) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(
            (
                prop::option::of(string_match()),
                prop::option::of(("end-user|x-canary", string_match())),
            ),
            1..3,
        )),
        split(subsets),
        prop::option::of(duration()),
        prop::option::of(prop_oneof![
            Just((0i32, None, None)),
            (
                1i32..5,
                prop::option::of(duration()),
                prop::option::of(Just("5xx,connect-failure,gateway-error"))
            ),
        ]),
        prop::option::of((1u32..100, 400u32..600)),
    )
        .prop_map(|(matches, split, timeout, retries, abort)| {
            let mut r = json!({
                "route": split.iter().map(|(i, w)| json!({
                    "destination": { "host": "reviews", "subset": format!("v{}", i + 1) },
                    "weight": w,
                })).collect::<Vec<_>>(),
            });
            if let Some(m) = matches {
                r["match"] = m
                    .into_iter()
                    .map(|(uri, header)| {
                        let mut m = json!({});
                        if let Some(u) = uri {
                            m["uri"] = u;
                        }
                        if let Some((name, h)) = header {
                            m["headers"] = json!({ name: h });
                        }
                        m
                    })
                    .collect();
            }
            if let Some(t) = timeout {
                r["timeout"] = t.into();
            }
            if let Some((attempts, per_try, on)) = retries {
                let mut p = json!({ "attempts": attempts });
                if let Some(t) = per_try {
                    p["perTryTimeout"] = t.into();
                }
                if let Some(on) = on {
                    p["retryOn"] = on.into();
                }
                r["retries"] = p;
            }
            if let Some((pct, status)) = abort {
                r["fault"] =
                    json!({ "abort": { "percentage": { "value": pct }, "httpStatus": status } });
            }
            r
        })
}

/// A ServiceEntry for `reviews` with `subsets` versions, a DestinationRule naming them, and a
/// VirtualService routing over them.
fn document_set() -> impl Strategy<Value = Vec<Value>> {
    (1usize..4)
        .prop_flat_map(|n| {
            (
                Just(n),
                prop::collection::vec(http_route(n), 1..4),
                prop::option::of(prop_oneof![
                    Just("ROUND_ROBIN"),
                    Just("LEAST_REQUEST"),
                    Just("RANDOM")
                ]),
                prop::option::of((1u32..20, duration(), duration(), 0u32..=100)),
            )
        })
        .prop_map(|(n, http, lb, outlier)| {
            let se = json!({
                "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": { "name": "reviews" },
                "spec": {
                    "hosts": ["reviews"], "resolution": "STATIC",
                    "ports": [{ "number": 9080, "name": "http", "protocol": "HTTP" }],
                    "endpoints": (1..=n).map(|i| json!({
                        "address": format!("127.0.0.{i}"), "labels": { "version": format!("v{i}") },
                    })).collect::<Vec<_>>(),
                },
            });
            let mut policy = json!({});
            if let Some(lb) = lb {
                policy["loadBalancer"] = json!({ "simple": lb });
            }
            if let Some((errors, interval, ejection, pct)) = outlier {
                policy["outlierDetection"] = json!({
                    "consecutive5xxErrors": errors, "interval": interval,
                    "baseEjectionTime": ejection, "maxEjectionPercent": pct,
                });
            }
            let dr = json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": { "name": "reviews" },
                "spec": {
                    "host": "reviews", "trafficPolicy": policy,
                    "subsets": (1..=n).map(|i| json!({
                        "name": format!("v{i}"), "labels": { "version": format!("v{i}") },
                    })).collect::<Vec<_>>(),
                },
            });
            let vs = json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": { "name": "reviews" },
                "spec": { "hosts": ["reviews"], "http": http },
            });
            vec![se, dr, vs]
        })
}

fn load(texts: &[(&str, String)]) -> Result<ConfigSet, ConfigErrors> {
    let refs: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (*n, t.as_str())).collect();
    load_texts(&refs, &Workload::default(), &LoadOptions::default())
}

fn yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_saphyr::to_string(d).expect("YAML of a JSON value"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Every node under `spec` of `doc`, as a JSON pointer.
fn spec_paths(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                spec_paths(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                spec_paths(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// One change to one value of a document.
#[derive(Clone, Debug)]
enum Edit {
    Replace(Value),
    Remove,
    AddUnknownField,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            prop_oneof![Just(-1.5f64), Just(1e300), Just(0.0), Just(100.5)].prop_map(Value::from),
            prop_oneof![
                Just(String::new()),
                Just("-1s".into()),
                Just("v9".into()),
                Just("*".into()),
                Just("(".into()),
                Just("reviews".into()),
                "[ -~]{0,12}",
            ]
            .prop_map(Value::String),
            Just(json!([])),
            Just(json!({})),
            Just(json!([{}])),
        ]
        .prop_map(Edit::Replace),
        Just(Edit::Remove),
        Just(Edit::AddUnknownField),
    ]
}

fn apply(doc: &mut Value, pointer: &str, edit: &Edit) {
    match edit {
        Edit::Replace(v) => {
            if let Some(slot) = doc.pointer_mut(pointer) {
                *slot = v.clone();
            }
        }
        Edit::Remove => {
            let (parent, key) = pointer.rsplit_once('/').expect("under spec");
            match doc.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = key.parse::<usize>() {
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }
        Edit::AddUnknownField => {
            if let Some(Value::Object(m)) = doc.pointer_mut(pointer) {
                m.insert("fieldNoIstioHas".into(), json!(1));
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn generated_documents_are_accepted_as_yaml_and_json(docs in document_set()) {
        let as_json: Vec<(&str, String)> = vec![
            ("se.json", docs[0].to_string()), ("dr.json", docs[1].to_string()), ("vs.json", docs[2].to_string()),
        ];
        let as_yaml = yaml(&docs);
        for texts in [as_json, vec![("all.yaml", as_yaml.clone())]] {
            let set = load(&texts).map_err(|e| TestCaseError::fail(format!("{e}\n{as_yaml}")))?;
            prop_assert_eq!(set.documents(), 3);
            prop_assert!(set.route_table("reviews.default.svc.cluster.local").is_some());
        }
    }

    #[test]
    fn a_document_changed_at_one_value_is_accepted_or_names_the_field(
        docs in document_set(),
        which in 0usize..3,
        at in any::<prop::sample::Index>(),
        edit in edit(),
    ) {
        let mut docs = docs;
        let mut paths = Vec::new();
        spec_paths(&docs[which]["spec"], "/spec".into(), &mut paths);
        let pointer = at.get(&paths[1..]).clone();
        apply(&mut docs[which], &pointer, &edit);
        let names = ["se.json", "dr.json", "vs.json"];
        let texts: Vec<(&str, String)> = names.iter().zip(&docs).map(|(n, d)| (*n, d.to_string())).collect();
        if let Err(errors) = load(&texts) {
            let errors: Vec<_> = errors.errors().collect();
            prop_assert!(!errors.is_empty());
            for e in errors {
                let file = e.file.to_string_lossy();
                prop_assert!(names.contains(&file.as_ref()), "{e}");
                prop_assert!(!e.document.is_empty(), "no document: {e}");
                prop_assert!(!e.reason.is_empty(), "no reason: {e}");
                // The change was under `spec`: the error points into it (a set-level error, such
                // as a route to a subset no rule defines, names the route's field).
                prop_assert!(e.field.starts_with("spec"), "{pointer} {edit:?}: no field path in {e}");
            }
        }
    }

    #[test]
    fn any_change_to_the_text_never_panics_and_errors_name_the_file(
        docs in document_set(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut text = yaml(&docs);
        for m in &mutations {
            text = mutate(&text, m);
        }
        if let Err(errors) = load(&[("all.yaml", text)]) {
            for e in errors.errors() {
                prop_assert_eq!(e.file.to_string_lossy(), "all.yaml");
                prop_assert!(!e.reason.is_empty());
            }
        }
    }
}
