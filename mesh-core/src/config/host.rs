//! Host names as Istio resolves them.
//!
//! **In documents**, only a dot-less name is a short name: `reviews` in a document of namespace
//! `prod` is `reviews.prod.svc.cluster.local`; `reviews.prod` has a dot and is taken literally
//! (Istio's `ResolveShortnameToFQDN`; `istioctl analyze` reports it as IST0101 when nothing has
//! that name). ServiceEntry hosts are never expanded. Wildcards (`*.example.com`) stay as written.
//!
//! **In requests**, an authority means what Kubernetes' DNS search path makes of it, as
//! sidecars and gRPC's proxyless resolver answer to every alias: `reviews`, `reviews.prod`,
//! `reviews.prod.svc` and `reviews.prod.svc.cluster.local`, with or without the port, all reach
//! the same service ([`Naming::candidates`], the cluster forms first, the literal name last).

use std::net::IpAddr;

/// The cluster domain Kubernetes uses unless told otherwise.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// The namespace of a workload that does not say: Kubernetes' `default`.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Istio's root namespace: mesh-wide policies live here.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The local namespace and the cluster domain, to expand names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naming {
    /// The namespace this workload runs in.
    pub namespace: String,
    /// The cluster's DNS domain.
    pub cluster_domain: String,
    /// The SPIFFE trust domain (Istio's default is `cluster.local` too): service accounts in
    /// documents become `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub trust_domain: String,
}

impl Default for Naming {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.into(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            trust_domain: DEFAULT_CLUSTER_DOMAIN.into(),
        }
    }
}

impl Naming {
    /// A host as a document of namespace `ns` means it (lowercase, no trailing dot).
    pub fn expand(&self, host: &str, ns: &str) -> String {
        let host = normalize(host);
        if host.contains('.') || host.contains('*') || host.parse::<IpAddr>().is_ok() {
            host
        } else {
            [host.as_str(), ".", ns, ".svc.", &self.cluster_domain].concat()
        }
    }

    /// The hosts a request's host may name, most specific first: its cluster forms (for
    /// `reviews`, `reviews.<local ns>.svc.<domain>`; for `reviews.prod` and `reviews.prod.svc`,
    /// `reviews.prod.svc.<domain>`), then the name as written.
    pub fn candidates(&self, host: &str) -> Vec<String> {
        let host = normalize(host);
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return vec![host];
        }
        let dots = host.matches('.').count();
        let fqdn = match dots {
            0 => Some(format!(
                "{host}.{}.svc.{}",
                self.namespace, self.cluster_domain
            )),
            1 => Some(format!("{host}.svc.{}", self.cluster_domain)),
            2 if host.ends_with(".svc") => Some(format!("{host}.{}", self.cluster_domain)),
            _ => None,
        };
        match fqdn {
            Some(f) => vec![f, host],
            None => vec![host],
        }
    }

    /// The shortest spellings a cluster FQDN answers to (`reviews.prod.svc.cluster.local` →
    /// `reviews.prod.svc`, `reviews.prod`, and `reviews` when `prod` is the local namespace),
    /// for finding endpoints listed under a short name.
    pub fn aliases(&self, fqdn: &str) -> Vec<String> {
        let suffix = format!(".svc.{}", self.cluster_domain);
        let Some(name_ns) = fqdn.strip_suffix(&suffix) else {
            return Vec::new();
        };
        let Some((name, ns)) = name_ns.split_once('.') else {
            return Vec::new();
        };
        if ns.contains('.') {
            return Vec::new();
        }
        let mut out = vec![format!("{name_ns}.svc"), name_ns.to_owned()];
        if ns == self.namespace {
            out.push(name.to_owned());
        }
        out
    }
}

/// Lowercase, without a trailing dot.
pub fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `pattern` (a host, or `*.suffix`) covers `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dotless_names_expand_in_documents() {
        let n = Naming::default();
        assert_eq!(
            n.expand("reviews", "prod"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(n.expand("Reviews.Prod", "default"), "reviews.prod");
        assert_eq!(n.expand("*.example.com", "prod"), "*.example.com");
        assert_eq!(n.expand("10.0.0.1", "prod"), "10.0.0.1");
    }

    #[test]
    fn request_hosts_try_the_cluster_forms_first() {
        let n = Naming {
            namespace: "prod".into(),
            ..Naming::default()
        };
        let fqdn = "reviews.prod.svc.cluster.local";
        for h in [
            "reviews",
            "reviews.prod",
            "reviews.prod.svc",
            fqdn,
            "REVIEWS.prod.svc.cluster.local.",
        ] {
            assert_eq!(n.candidates(h)[0], fqdn, "{h}");
        }
        assert_eq!(n.candidates("api.example.com"), ["api.example.com"]);
        assert_eq!(
            n.candidates("example.com"),
            ["example.com.svc.cluster.local", "example.com"]
        );
        assert_eq!(n.candidates("10.1.2.3"), ["10.1.2.3"]);
        assert_eq!(
            n.aliases(fqdn),
            ["reviews.prod.svc", "reviews.prod", "reviews"]
        );
        assert_eq!(
            n.aliases("ratings.other.svc.cluster.local"),
            ["ratings.other.svc", "ratings.other"]
        );
        assert!(n.aliases("api.example.com").is_empty());
    }

    #[test]
    fn wildcards_cover_subdomains() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("a.example.com", "a.example.com"));
    }
}
