//! `mesh explain`: where one request goes, and why.

use std::path::{Path, PathBuf};

use mesh_core::{
    SpiffeId,
    config::{ExplainInput, LoadOptions, Workload, explain, load},
    discover::{EndpointSource, FileSource},
};

use crate::Outcome;

pub(crate) struct Args<'a> {
    pub(crate) paths: &'a [PathBuf],
    pub(crate) workload: &'a Workload,
    pub(crate) options: &'a LoadOptions,
    pub(crate) endpoints: Option<&'a Path>,
    pub(crate) principal: Option<&'a str>,
    pub(crate) json: bool,
    pub(crate) method: &'a str,
    pub(crate) url: &'a str,
    pub(crate) headers: &'a [String],
}

pub(crate) fn run(a: Args<'_>) -> Result<Outcome, String> {
    let set = match load(a.paths, a.workload, a.options) {
        Ok(s) => s,
        Err(errors) => {
            let mut out = String::new();
            for e in &errors.0 {
                out.push_str(&format!("{e}\n"));
            }
            return Ok(Outcome::Invalid(out));
        }
    };
    let method = http::Method::from_bytes(a.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{:?} is not an HTTP method", a.method))?;
    let url = if a.url.contains("://") {
        a.url.to_owned()
    } else {
        format!("http://{}", a.url)
    };
    let mut req = http::Request::builder().method(method).uri(&url);
    for h in a.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("-H {h:?}: expected 'name: value'"))?;
        req = req.header(k.trim(), v.trim());
    }
    let req = req.body(()).map_err(|e| format!("invalid request: {e}"))?;
    let principal: Option<SpiffeId> = match a.principal {
        None => None,
        Some(p) => {
            let full = if p.starts_with("spiffe://") {
                p.to_owned()
            } else {
                format!("spiffe://{p}")
            };
            Some(full.parse().map_err(|e| format!("--as {p:?}: {e}"))?)
        }
    };
    let file = match a.endpoints {
        Some(p) => Some(FileSource::open(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let naming = a.workload.naming.clone();
    let lookup = |name: &mesh_core::ServiceName| {
        let file = file.as_ref()?;
        let spellings: Vec<String> = std::iter::once(name.host().to_owned())
            .chain(naming.aliases(name.host()))
            .collect();
        let listed = file
            .services()
            .into_iter()
            .find(|s| s.port() == name.port() && spellings.iter().any(|h| h == s.host()))?;
        file.subscribe(&listed).snapshot().endpoints
    };
    let explanation = explain(
        &set,
        &ExplainInput {
            request: &req,
            principal: principal.as_ref(),
            endpoints: &lookup,
        },
    );
    Ok(Outcome::Ok(if a.json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&explanation).map_err(|e| e.to_string())?
        )
    } else {
        explanation.to_string()
    }))
}
