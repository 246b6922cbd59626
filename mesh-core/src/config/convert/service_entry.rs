//! ServiceEntry → [`ServiceEntry`]: hosts, ports and where their endpoints come from.

use std::{collections::BTreeMap, net::IpAddr};

use super::{
    Ctx,
    common::{check_export_to, nth, sub},
};
use crate::{
    config::{host::normalize, wire},
    endpoint::{DEFAULT_WEIGHT, Endpoint, Labels},
    identity::SpiffeId,
    policy::Protocol,
};

/// How a ServiceEntry's endpoints are found (Istio's `resolution`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The endpoints listed, by IP (`STATIC`).
    Static,
    /// The endpoints' (or, without endpoints, the hosts') names resolved with DNS (`DNS`,
    /// `DNS_ROUND_ROBIN`).
    Dns,
    /// No endpoints: the host itself, as the application would reach it (`NONE`: in-process,
    /// the host is resolved with DNS when requests are sent).
    None,
}

/// A port of a ServiceEntry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntryPort {
    /// The service port.
    pub number: u16,
    /// Its name (endpoint port maps are keyed by it).
    pub name: String,
    /// The HTTP version its protocol speaks.
    pub protocol: Protocol,
    /// The endpoints' port when they do not say (`targetPort`).
    pub target_port: Option<u16>,
}

/// An endpoint as written: an IP or a DNS name, with its per-port overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntryEndpoint {
    /// `address`.
    pub address: String,
    /// `ports`: service port name → endpoint port.
    pub ports: BTreeMap<String, u16>,
    /// `labels`.
    pub labels: Labels,
    /// `weight` (at least 1).
    pub weight: u32,
    /// The SPIFFE ID its `serviceAccount` stands for.
    pub identity: Option<SpiffeId>,
}

/// A validated ServiceEntry.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceEntry {
    /// The hosts (never expanded).
    pub hosts: Vec<String>,
    /// Its namespace.
    pub namespace: String,
    /// `exportTo`.
    pub export_to: Vec<String>,
    /// Where it was written.
    pub source: String,
    /// The ports.
    pub ports: Vec<ServiceEntryPort>,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// The endpoints listed.
    pub endpoints: Vec<ServiceEntryEndpoint>,
}

impl ServiceEntry {
    /// The port `number`, if the entry has it.
    pub fn port(&self, number: u16) -> Option<&ServiceEntryPort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// For `STATIC` resolution (and `DNS` endpoints given as IPs): the endpoints of `port`.
    pub fn static_endpoints(&self, port: &ServiceEntryPort) -> Vec<Endpoint> {
        self.endpoints
            .iter()
            .filter_map(|e| {
                let ip: IpAddr = e.address.parse().ok()?;
                let p = e
                    .ports
                    .get(&port.name)
                    .copied()
                    .or(port.target_port)
                    .unwrap_or(port.number);
                Some(Endpoint {
                    addr: (ip, p).into(),
                    weight: e.weight,
                    labels: e.labels.clone(),
                    identity: e.identity.clone(),
                })
            })
            .collect()
    }
}

pub(crate) fn convert(cx: &mut Ctx<'_>, spec: &wire::ServiceEntrySpec) -> Option<ServiceEntry> {
    let before = cx.p.error_count();
    if spec.hosts.is_empty() {
        cx.p.error("spec.hosts", "at least one host is required");
    }
    let mut hosts = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        if h == "*" || h.is_empty() {
            cx.p.error(
                nth("spec", "hosts", i),
                "hostname cannot be wildcard or empty",
            );
            continue;
        }
        if h.contains('*') {
            cx.p.unimplemented(nth("spec", "hosts", i), "wildcard ServiceEntry hosts");
            continue;
        }
        hosts.push(normalize(h));
    }
    check_export_to(&mut cx.p, "spec.exportTo", &spec.export_to);
    if !spec.addresses.is_empty() {
        cx.p.warn(
            "spec.addresses",
            "VIPs are not used in-process: requests are routed by host",
        );
    }
    if spec.workload_selector.is_some() {
        cx.p.unimplemented(
            "spec.workloadSelector",
            "workloadSelector (list the endpoints)",
        );
    }
    if !spec.subject_alt_names.is_empty() {
        cx.p.unimplemented("spec.subjectAltNames", "subjectAltNames");
    }
    match spec.location.as_deref() {
        None | Some("MESH_EXTERNAL") | Some("MESH_INTERNAL") => {}
        Some(other) => cx.p.error(
            "spec.location",
            format!("{other:?} is not one of MESH_EXTERNAL, MESH_INTERNAL"),
        ),
    }
    let mut ports: Vec<ServiceEntryPort> = Vec::new();
    if spec.ports.is_empty() {
        cx.p.error("spec.ports", "at least one port is required");
    }
    for (i, sp) in spec.ports.iter().enumerate() {
        let at = nth("spec", "ports", i);
        let Some(number) = sp
            .number
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
        else {
            cx.p.error(sub(&at, "number"), "a port number (1 to 65535) is required");
            continue;
        };
        let Some(name) = sp.name.clone().filter(|n| !n.is_empty()) else {
            cx.p.error(sub(&at, "name"), "a port name is required");
            continue;
        };
        if ports.iter().any(|p| p.number == number) {
            cx.p.error(sub(&at, "number"), format!("port {number} is listed twice"));
            continue;
        }
        if ports.iter().any(|p| p.name == name) {
            cx.p.error(
                sub(&at, "name"),
                format!("port name {name:?} is listed twice"),
            );
            continue;
        }
        let protocol = match sp
            .protocol
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("HTTP") => Protocol::Http1,
            Some("HTTP2" | "GRPC" | "GRPC-WEB") => Protocol::Http2,
            Some(p @ ("HTTPS" | "TLS" | "TCP" | "MONGO" | "MYSQL" | "REDIS" | "UDP")) => {
                cx.p.unimplemented(
                    sub(&at, "protocol"),
                    &format!("protocol {p} (mesh routes HTTP, HTTP/2 and gRPC)"),
                );
                continue;
            }
            Some(other) => {
                cx.p.error(
                    sub(&at, "protocol"),
                    format!("{other:?} is not a protocol Istio knows"),
                );
                continue;
            }
        };
        let target_port = match sp.target_port {
            None => None,
            Some(t) => match u16::try_from(t).ok().filter(|t| *t > 0) {
                Some(t) => Some(t),
                None => {
                    cx.p.error(sub(&at, "targetPort"), format!("{t} is not a port number"));
                    continue;
                }
            },
        };
        ports.push(ServiceEntryPort {
            number,
            name,
            protocol,
            target_port,
        });
    }
    let resolution = match spec.resolution.as_deref().unwrap_or("NONE") {
        "STATIC" => Resolution::Static,
        "DNS" => Resolution::Dns,
        "DNS_ROUND_ROBIN" => {
            if spec.endpoints.len() > 1 {
                cx.p.error(
                    "spec.endpoints",
                    "DNS_ROUND_ROBIN mode cannot have multiple endpoints",
                );
            }
            Resolution::Dns
        }
        "NONE" => {
            if !spec.endpoints.is_empty() {
                cx.p.error("spec.endpoints", "NONE mode cannot set endpoints");
            }
            Resolution::None
        }
        "DYNAMIC_DNS" => {
            cx.p.unimplemented("spec.resolution", "DYNAMIC_DNS resolution");
            Resolution::None
        }
        other => {
            cx.p.error(
                "spec.resolution",
                format!("{other:?} is not one of NONE, STATIC, DNS, DNS_ROUND_ROBIN, DYNAMIC_DNS"),
            );
            Resolution::None
        }
    };
    let mut endpoints = Vec::new();
    for (i, e) in spec.endpoints.iter().enumerate() {
        let at = nth("spec", "endpoints", i);
        let Some(address) = e.address.clone().filter(|a| !a.is_empty()) else {
            cx.p.error(sub(&at, "address"), "an endpoint needs an address");
            continue;
        };
        if address.starts_with("unix://") {
            cx.p.unimplemented(sub(&at, "address"), "unix domain socket endpoints");
            continue;
        }
        let is_ip = address.parse::<IpAddr>().is_ok();
        if resolution == Resolution::Static && !is_ip {
            cx.p.error(
                sub(&at, "address"),
                format!("{address:?}: STATIC resolution needs IP addresses (use DNS for names)"),
            );
            continue;
        }
        if resolution == Resolution::Dns && !is_ip && spec.endpoints.len() > 1 {
            cx.p.unimplemented(
                sub(&at, "address"),
                "several DNS-named endpoints in one ServiceEntry",
            );
            continue;
        }
        let mut eports = BTreeMap::new();
        for (name, n) in &e.ports {
            if !ports.iter().any(|p| &p.name == name) {
                cx.p.error(
                    format!("{at}.ports[{name:?}]"),
                    format!("no service port is named {name:?}"),
                );
                continue;
            }
            match u16::try_from(*n).ok().filter(|n| *n > 0) {
                Some(p) => {
                    eports.insert(name.clone(), p);
                }
                None => cx.p.error(
                    format!("{at}.ports[{name:?}]"),
                    format!("{n} is not a port number"),
                ),
            }
        }
        let identity = match &e.service_account {
            None => None,
            Some(sa) => match SpiffeId::parse(&format!(
                "spiffe://{}/ns/{}/sa/{sa}",
                cx.naming.trust_domain, cx.ns
            )) {
                Ok(id) => Some(id),
                Err(err) => {
                    cx.p.error(sub(&at, "serviceAccount"), err.to_string());
                    continue;
                }
            },
        };
        for (field, set) in [
            ("network", e.network.is_some()),
            ("locality", e.locality.is_some()),
        ] {
            if set {
                cx.p.unimplemented(format!("{at}.{field}"), field);
            }
        }
        endpoints.push(ServiceEntryEndpoint {
            address,
            ports: eports,
            labels: e
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            weight: match e.weight {
                Some(0) | None => DEFAULT_WEIGHT,
                Some(w) => w,
            },
            identity,
        });
    }
    if resolution == Resolution::Static && spec.endpoints.is_empty() {
        cx.p.warn(
            "spec.endpoints",
            "STATIC resolution with no endpoints: the hosts have none",
        );
    }
    (cx.p.error_count() == before).then(|| ServiceEntry {
        hosts,
        namespace: cx.ns.to_owned(),
        export_to: spec.export_to.clone(),
        source: cx.document.to_owned(),
        ports,
        resolution,
        endpoints,
    })
}
