//! The validated whole: every document of a configuration, cross-checked, with lookups by host.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
};

use super::{
    ConfigError, Workload,
    convert::{
        common::exported_to,
        destination_rule::DestinationRule,
        security::{AuthzPolicy, PeerAuthn, authorizer_for, peer_mode_for},
        service_entry::{ServiceEntry, ServiceEntryPort},
        virtual_service::VirtualService,
    },
    host::{ROOT_NAMESPACE, host_matches},
};
use crate::{authz::Authorizer, route::RouteTable, tls::ServerTlsMode};

/// One converted document.
#[derive(Clone)]
pub(crate) enum ConvertedDoc {
    // Shared: a reload reuses the conversions of unchanged files without copying them.
    VirtualService(Arc<VirtualService>),
    DestinationRule(Arc<DestinationRule>),
    ServiceEntry(Arc<ServiceEntry>),
    Authorization(AuthzPolicy),
    PeerAuthentication(PeerAuthn),
}

/// One converted document with where it came from: (file, `Kind ns/name`, document).
pub(crate) type Doc = (PathBuf, String, ConvertedDoc);

/// The converted documents of a set, in file order.
#[derive(Default)]
pub(crate) struct Converted {
    docs: Vec<Option<Doc>>,
    /// Position of each document by `Kind ns/name`.
    index: HashMap<String, usize>,
}

impl Converted {
    /// Adds a document; one of the same kind, namespace and name replaces the earlier one, as
    /// `kubectl apply` of both files would (a warning says so).
    pub(crate) fn push(
        &mut self,
        file: &std::path::Path,
        document: String,
        doc: ConvertedDoc,
        problems: &mut Vec<ConfigError>,
    ) {
        if let Some(earlier) = self
            .index
            .get(&document)
            .and_then(|i| self.docs[*i].take())
            .map(|d| d.0)
        {
            problems.push(
                ConfigError::error(
                    file,
                    &document,
                    "metadata.name",
                    format!(
                        "replaces the document of the same kind and name in {} (as kubectl apply would)",
                        earlier.display()
                    ),
                )
                .warning(),
            );
        }
        self.index.insert(document.clone(), self.docs.len());
        self.docs.push(Some((file.to_path_buf(), document, doc)));
    }
}

/// A validated configuration: what every document says, as it applies to this workload. See
/// the [module docs](super).
#[derive(Clone, Debug, Default)]
pub struct ConfigSet {
    pub(crate) version: String,
    pub(crate) sources: Vec<String>,
    pub(crate) documents: usize,
    vs_exact: HashMap<String, Arc<VirtualService>>,
    vs_wildcard: Vec<(String, Arc<VirtualService>)>,
    destination_rules: HashMap<String, Arc<DestinationRule>>,
    service_entries: Vec<Arc<ServiceEntry>>,
    se_by_host: HashMap<String, Arc<ServiceEntry>>,
    authorization: Vec<AuthzPolicy>,
    authorizer: Arc<Authorizer>,
    peer: Vec<PeerAuthn>,
    warnings: Vec<ConfigError>,
    workload: Workload,
}

impl ConfigSet {
    /// An empty configuration (no documents).
    pub fn empty(workload: Workload) -> Self {
        Self {
            version: "empty".into(),
            workload,
            ..Self::default()
        }
    }

    /// The content hash of the documents (hex), the same for the same files' contents.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where the documents came from (file paths, or an etcd prefix and revision).
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// How many documents the set holds.
    pub fn documents(&self) -> usize {
        self.documents
    }

    /// The warnings found while validating (the set applies).
    pub fn warnings(&self) -> &[ConfigError] {
        &self.warnings
    }

    /// The workload the set was read for.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// The VirtualService routing `host` (exact, else the longest wildcard that covers it).
    pub fn virtual_service(&self, host: &str) -> Option<&Arc<VirtualService>> {
        self.vs_exact.get(host).or_else(|| {
            self.vs_wildcard
                .iter()
                .filter(|(p, _)| host_matches(p, host))
                .max_by_key(|(p, _)| p.len())
                .map(|(_, vs)| vs)
        })
    }

    /// The routes of `host`, if a VirtualService names it.
    pub fn route_table(&self, host: &str) -> Option<&RouteTable> {
        self.virtual_service(host).map(|vs| &vs.table)
    }

    /// The DestinationRule of `host` (several for one host merged, first wins).
    pub fn destination_rule(&self, host: &str) -> Option<&Arc<DestinationRule>> {
        self.destination_rules.get(host)
    }

    /// The ServiceEntry naming `host`, and its `port`.
    pub fn service_entry(
        &self,
        host: &str,
        port: u16,
    ) -> Option<(&Arc<ServiceEntry>, &ServiceEntryPort)> {
        let se = self.se_by_host.get(host)?;
        Some((se, se.port(port)?))
    }

    /// Every ServiceEntry that applies.
    pub fn service_entries(&self) -> &[Arc<ServiceEntry>] {
        &self.service_entries
    }

    /// Whether a document names `host` (a VirtualService, DestinationRule or ServiceEntry).
    pub fn knows_host(&self, host: &str) -> bool {
        self.virtual_service(host).is_some()
            || self.destination_rules.contains_key(host)
            || self.se_by_host.contains_key(host)
    }

    /// Every host a VirtualService, DestinationRule or ServiceEntry names, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut h: Vec<String> = self
            .vs_exact
            .keys()
            .chain(self.vs_wildcard.iter().map(|(p, _)| p))
            .chain(self.destination_rules.keys())
            .chain(self.se_by_host.keys())
            .cloned()
            .collect();
        h.sort();
        h.dedup();
        h
    }

    /// The authorization of this workload's inbound requests.
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authorizer
    }

    /// The AuthorizationPolicies of the set (all, whether they apply to this workload or not).
    pub fn authorization_policies(&self) -> &[AuthzPolicy] {
        &self.authorization
    }

    /// This workload's inbound mTLS mode on `port` (PeerAuthentication; PERMISSIVE by default).
    pub fn peer_mode(&self, port: u16) -> ServerTlsMode {
        peer_mode_for(&self.peer, &self.workload, port)
    }

    /// The PeerAuthentications of the set.
    pub fn peer_authentications(&self) -> &[PeerAuthn] {
        &self.peer
    }
}

/// Builds the set from converted documents, with the checks that span documents.
pub(crate) fn assemble(
    converted: Converted,
    workload: &Workload,
    problems: &mut Vec<ConfigError>,
    version: String,
    sources: Vec<String>,
) -> ConfigSet {
    let ns = workload.naming.namespace.as_str();
    let mut set = ConfigSet {
        version,
        sources,
        documents: converted.index.len(),
        workload: workload.clone(),
        ..ConfigSet::default()
    };
    let mut vs_owner: HashMap<String, String> = HashMap::new();
    // DestinationRules by host, then namespace, in file order.
    let mut drs: BTreeMap<String, Vec<Arc<DestinationRule>>> = BTreeMap::new();
    let mut se_owner: HashMap<(String, u16), String> = HashMap::new();
    let mut vss: Vec<(PathBuf, String, Arc<VirtualService>)> = Vec::new();
    for (file, document, doc) in converted.docs.into_iter().flatten() {
        match doc {
            ConvertedDoc::VirtualService(vs) => {
                if !exported_to(&vs.export_to, &vs.namespace, ns) {
                    continue;
                }
                let mut clash = false;
                for h in &vs.hosts {
                    if let Some(owner) = vs_owner.get(h) {
                        problems.push(ConfigError::error(
                            &file,
                            &document,
                            "spec.hosts",
                            format!("host {h} is already routed by {owner}: Istio merges VirtualServices only for gateways (IST0109), so mesh rejects a second one"),
                        ));
                        clash = true;
                    }
                }
                if clash {
                    continue;
                }
                for h in &vs.hosts {
                    vs_owner.insert(h.clone(), document.clone());
                }
                vss.push((file, document, vs));
            }
            ConvertedDoc::DestinationRule(dr) => {
                if exported_to(&dr.export_to, &dr.namespace, ns) {
                    drs.entry(dr.host.clone()).or_default().push(dr);
                }
            }
            ConvertedDoc::ServiceEntry(se) => {
                if !exported_to(&se.export_to, &se.namespace, ns) {
                    continue;
                }
                let mut clash = false;
                for h in &se.hosts {
                    for p in &se.ports {
                        if let Some(owner) = se_owner.get(&(h.clone(), p.number)) {
                            problems.push(ConfigError::error(
                                &file,
                                &document,
                                "spec.hosts",
                                format!("{h}:{} is already declared by {owner}", p.number),
                            ));
                            clash = true;
                        }
                    }
                }
                if clash {
                    continue;
                }
                for h in &se.hosts {
                    for p in &se.ports {
                        se_owner.insert((h.clone(), p.number), document.clone());
                    }
                }
                for h in &se.hosts {
                    set.se_by_host.insert(h.clone(), se.clone());
                }
                set.service_entries.push(se);
            }
            ConvertedDoc::Authorization(a) => set.authorization.push(a),
            ConvertedDoc::PeerAuthentication(p) => set.peer.push(p),
        }
    }
    for (host, group) in drs {
        if let Some(dr) = merge_destination_rules(&host, group, ns, problems) {
            set.destination_rules.insert(host, dr);
        }
    }
    // Routes must name subsets that exist (Istio: IST0101 from analyze and 503s at runtime;
    // mesh rejects at load, which is stricter).
    for (file, document, vs) in &vss {
        for route in &vs.table.routes {
            // The field is named only for an error.
            let refs = route
                .backends
                .backends()
                .iter()
                .enumerate()
                .map(|(k, b)| ("route", k, &b.backend))
                .chain(
                    route
                        .mirrors
                        .iter()
                        .enumerate()
                        .map(|(k, m)| ("mirrors", k, &m.backend)),
                );
            for (list, k, backend) in refs {
                let Some(subset) = &backend.subset else {
                    continue;
                };
                let known = set
                    .destination_rules
                    .get(&*backend.host)
                    .is_some_and(|dr| dr.subset(subset).is_some());
                if !known {
                    problems.push(ConfigError::error(
                        file,
                        document,
                        format!("{}.{list}[{k}].destination.subset", route.id),
                        format!("subset {subset:?} of {} is defined by no DestinationRule (Istio's analyzer reports this as IST0101; requests would fail with 503)", backend.host),
                    ));
                }
            }
        }
    }
    for (_, _, vs) in vss {
        for h in &vs.hosts {
            if h.starts_with('*') {
                set.vs_wildcard.push((h.clone(), vs.clone()));
            } else {
                set.vs_exact.insert(h.clone(), vs.clone());
            }
        }
    }
    set.authorizer = Arc::new(authorizer_for(&set.authorization, workload));
    set.warnings = problems.iter().filter(|p| !p.is_error()).cloned().collect();
    set
}

/// One DestinationRule per host: the namespace that wins (the client's, then the host's, then
/// the root namespace, then the first), and within it several merged as Istio merges them:
/// subsets appended (a repeated name: the first wins), the first `trafficPolicy` wins.
fn merge_destination_rules(
    host: &str,
    group: Vec<Arc<DestinationRule>>,
    client_ns: &str,
    problems: &mut Vec<ConfigError>,
) -> Option<Arc<DestinationRule>> {
    let host_ns = host.split('.').nth(1).unwrap_or("");
    let pick = [client_ns, host_ns, ROOT_NAMESPACE]
        .into_iter()
        .find(|ns| group.iter().any(|d| d.namespace == *ns))
        .map(str::to_owned)
        .or_else(|| group.first().map(|d| d.namespace.clone()))?;
    let mut it = group.into_iter().filter(|d| d.namespace == pick);
    let first = it.next()?;
    let rest: Vec<_> = it.collect();
    if rest.is_empty() {
        return Some(first);
    }
    let mut merged = Arc::unwrap_or_clone(first);
    for other in rest {
        let other = Arc::unwrap_or_clone(other);
        if other.policy != Default::default() && merged.policy != Default::default() {
            problems.push(
                ConfigError::error(PathBuf::new(), &other.source, "spec.trafficPolicy", format!("{} already sets the trafficPolicy of {host}: the first wins, this one is ignored", merged.source))
                    .warning(),
            );
        } else if merged.policy == Default::default() {
            merged.policy = other.policy.clone();
        }
        for s in other.subsets {
            if merged.subset(&s.name).is_some() {
                problems.push(
                    ConfigError::error(
                        PathBuf::new(),
                        &other.source,
                        "spec.subsets",
                        format!(
                            "subset {:?} of {host} is already defined by {}: the first wins",
                            s.name, merged.source
                        ),
                    )
                    .warning(),
                );
            } else {
                merged.subsets.push(s);
            }
        }
    }
    Some(Arc::new(merged))
}
