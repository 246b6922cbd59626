//! OpenMetrics encoding of a [`Snapshot`] (the prometheus-client collector).

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};

use super::{Inner, LatencyHistogram, Snapshot};
use crate::{breaker::BreakerState, outlier::HealthState, tls::HandshakeFailure};

/// Encodes the tracked state on every scrape.
#[derive(Debug)]
pub(super) struct SnapshotCollector(pub(super) std::sync::Arc<Inner>);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode(&self.0.snapshot(), &mut encoder)
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One metric family: a name, help, type, and its samples.
struct Family<'a, V> {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels<'a>, V)>,
}

impl<'a, V> Family<'a, V> {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: Labels<'a>, v: V) {
        self.samples.push((labels, v));
    }
}

trait Value {
    fn encode(
        &self,
        kind: &MetricType,
        e: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result;
}

impl Value for u64 {
    fn encode(
        &self,
        kind: &MetricType,
        mut e: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result {
        match kind {
            MetricType::Counter => e.encode_counter::<NoLabelSet, _, u64>(self, None),
            _ => e.encode_gauge(&(*self as i64)),
        }
    }
}

impl Value for f64 {
    fn encode(
        &self,
        _kind: &MetricType,
        mut e: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result {
        e.encode_gauge(self)
    }
}

fn write<V: Value>(f: &Family<'_, V>, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    if f.samples.is_empty() {
        return Ok(());
    }
    let mut m = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
    for (labels, v) in &f.samples {
        v.encode(&f.kind, m.encode_family(labels)?)?;
    }
    Ok(())
}

fn encode(s: &Snapshot, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    use MetricType::{Counter, Gauge};

    let mut requests = Family::new(
        "client_requests",
        "Outbound requests by final status: HTTP class, gRPC code or mesh error.",
        Counter,
    );
    let mut in_flight = Family::new(
        "client_in_flight",
        "Outbound requests sent to endpoints and not answered yet.",
        Gauge,
    );
    let mut retries = Family::new("client_retries", "Retries sent.", Counter);
    let mut hedges = Family::new("client_hedges", "Hedged requests sent.", Counter);
    let mut exhausted = Family::new(
        "client_retry_budget_exhausted",
        "Retries (or hedges) the retry budget refused.",
        Counter,
    );
    let mut budget = Family::new(
        "client_retry_budget_available",
        "Retries the budget allows right now.",
        Gauge,
    );
    let mut shed = Family::new(
        "client_shed",
        "Requests shed by the concurrency or queue limit.",
        Counter,
    );
    let mut rate_limited = Family::new(
        "client_rate_limited",
        "Requests refused by the client-side rate limit.",
        Counter,
    );
    let mut breaker = Family::new(
        "client_breaker_state",
        "Circuit breaker state (1 for the current state).",
        Gauge,
    );
    let mut updates = Family::new(
        "discovery_updates",
        "Endpoint-set versions published by the service's discovery source.",
        Counter,
    );
    let mut disc_errors = Family::new(
        "discovery_errors",
        "Discovery failures (the last good endpoints were kept).",
        Counter,
    );
    let mut ep_in_flight = Family::new(
        "endpoint_in_flight",
        "Requests in flight per endpoint.",
        Gauge,
    );
    let mut ep_ewma = Family::<f64>::new(
        "endpoint_ewma_latency_seconds",
        "Peak-EWMA latency estimate per endpoint.",
        Gauge,
    );
    let mut ep_state = Family::new(
        "endpoint_state",
        "Endpoint health (1 for the current state: active, ejected, probing).",
        Gauge,
    );
    let mut ejections = Family::new(
        "endpoint_ejections",
        "Outlier ejections per endpoint (first ejections and failed probes).",
        Counter,
    );
    let mut readmissions = Family::new(
        "endpoint_readmissions",
        "Re-admissions after a successful probe, per endpoint.",
        Counter,
    );
    let mut ep_responses = Family::new(
        "endpoint_responses",
        "Responses per endpoint by outcome (failure: what outlier detection counts against it).",
        Counter,
    );
    let mut unroutable = Family::new(
        "client_unroutable",
        "Outbound requests no destination could be found for, by reason.",
        Counter,
    );
    for u in &s.unroutable {
        unroutable.push(vec![("reason", u.reason)], u.count);
    }

    let addrs: Vec<Vec<String>> = s
        .destinations
        .iter()
        .map(|d| d.endpoints.iter().map(|e| e.addr.to_string()).collect())
        .collect();
    for (d, addrs) in s.destinations.iter().zip(&addrs) {
        let svc = d.service.as_str();
        for c in &d.requests {
            requests.push(
                vec![
                    ("service", svc),
                    ("status", c.status),
                    ("outcome", c.outcome),
                ],
                c.count,
            );
        }
        in_flight.push(vec![("service", svc)], d.in_flight as u64);
        retries.push(vec![("service", svc)], d.retries.retries);
        hedges.push(vec![("service", svc)], d.retries.hedges);
        exhausted.push(vec![("service", svc)], d.retries.budget_exhausted);
        budget.push(vec![("service", svc)], d.retry_budget);
        shed.push(vec![("service", svc)], d.limits.shed);
        rate_limited.push(vec![("service", svc)], d.limits.rate_limited);
        if let Some(state) = &d.breaker {
            let current = breaker_state(state);
            for st in ["closed", "open", "half_open"] {
                breaker.push(
                    vec![("service", svc), ("state", st)],
                    u64::from(st == current),
                );
            }
        }
        updates.push(vec![("service", svc)], d.discovery.version);
        disc_errors.push(vec![("service", svc)], d.discovery.errors);
        for (e, addr) in d.endpoints.iter().zip(addrs) {
            let l = || vec![("service", svc), ("endpoint", addr.as_str())];
            ep_in_flight.push(l(), e.in_flight as u64);
            if let Some(ewma) = e.ewma_latency {
                ep_ewma.push(l(), ewma.as_secs_f64());
            }
            let current = health_state(e.health);
            for st in ["active", "ejected", "probing"] {
                let mut labels = l();
                labels.push(("state", st));
                ep_state.push(labels, u64::from(st == current));
            }
            ejections.push(l(), e.ejections);
            readmissions.push(l(), e.readmissions);
            for (outcome, n) in [("success", e.responses.0), ("failure", e.responses.1)] {
                let mut labels = l();
                labels.push(("outcome", outcome));
                ep_responses.push(labels, n);
            }
        }
    }

    write(&requests, encoder)?;
    histograms(
        "client_response_latency_seconds",
        "Time from sending an outbound request to its response head (or error).",
        s.destinations
            .iter()
            .map(|d| (("service", d.service.as_str()), &d.latency)),
        encoder,
    )?;
    for f in [
        &unroutable,
        &in_flight,
        &retries,
        &hedges,
        &exhausted,
        &shed,
        &rate_limited,
        &breaker,
        &updates,
        &disc_errors,
        &ep_in_flight,
        &ep_state,
        &ep_responses,
        &ejections,
        &readmissions,
    ] {
        write(f, encoder)?;
    }
    write(&budget, encoder)?;
    write(&ep_ewma, encoder)?;

    // Configuration sources.
    let mut reloads = Family::new(
        "config_reloads",
        "Configuration loads by source and result (ok, rejected: the old stayed live).",
        Counter,
    );
    let mut versions = Family::new(
        "config_version",
        "The configuration in force, by source and content hash (always 1).",
        Gauge,
    );
    for c in &s.config {
        let l = |r| vec![("source", c.kind), ("path", c.path.as_str()), ("result", r)];
        reloads.push(l("ok"), c.version);
        reloads.push(l("rejected"), c.rejections);
        if let Some(d) = &c.digest {
            versions.push(
                vec![
                    ("source", c.kind),
                    ("path", c.path.as_str()),
                    ("version", d.as_str()),
                ],
                1,
            );
        }
    }
    write(&reloads, encoder)?;
    write(&versions, encoder)?;

    // TLS material and handshakes.
    let mut tls_reloads = Family::new(
        "tls_reloads",
        "TLS material reloads by result (ok, rejected: the old stayed).",
        Counter,
    );
    let mut handshakes = Family::new(
        "tls_handshakes",
        "TLS handshakes by side and result (ok or the failure reason).",
        Counter,
    );
    let ids: Vec<String> = s.tls.iter().map(|t| t.identity.to_string()).collect();
    for (t, id) in s.tls.iter().zip(&ids) {
        tls_reloads.push(vec![("identity", id.as_str()), ("result", "ok")], t.reloads);
        tls_reloads.push(
            vec![("identity", id.as_str()), ("result", "rejected")],
            t.rejected_reloads,
        );
        for (side, counts) in [
            ("client", &t.handshakes.client),
            ("server", &t.handshakes.server),
        ] {
            let l = |r| vec![("identity", id.as_str()), ("side", side), ("result", r)];
            handshakes.push(l("ok"), counts.completed);
            for (reason, n) in &counts.failed {
                handshakes.push(l(HandshakeFailure::as_str(*reason)), *n);
            }
        }
    }
    write(&tls_reloads, encoder)?;
    write(&handshakes, encoder)?;

    // Inbound.
    let mut server = Family::new(
        "server_requests",
        "Inbound requests by caller identity (none: plaintext) and authorization decision.",
        Counter,
    );
    for c in &s.server {
        server.push(
            vec![("caller", c.caller.as_str()), ("decision", c.decision)],
            c.count,
        );
    }
    write(&server, encoder)?;
    let mut responses = Family::new(
        "server_responses",
        "Inbound requests by caller identity and final status: HTTP class, gRPC code, or error / cancelled.",
        Counter,
    );
    let mut server_in_flight = Family::new(
        "server_in_flight",
        "Inbound requests whose response has not been sent in full, by caller identity.",
        Gauge,
    );
    for c in &s.inbound {
        for r in &c.requests {
            responses.push(
                vec![
                    ("caller", c.caller.as_str()),
                    ("status", r.status),
                    ("outcome", r.outcome),
                ],
                r.count,
            );
        }
        server_in_flight.push(vec![("caller", c.caller.as_str())], c.in_flight);
    }
    write(&responses, encoder)?;
    write(&server_in_flight, encoder)?;
    histograms(
        "server_response_latency_seconds",
        "Time from an inbound request's arrival to its response head.",
        s.inbound
            .iter()
            .map(|c| (("caller", c.caller.as_str()), &c.latency)),
        encoder,
    )
}

/// One histogram family, a histogram per label value (nothing when there are none).
fn histograms<'a>(
    name: &'static str,
    help: &'static str,
    series: impl Iterator<Item = ((&'static str, &'a str), &'a LatencyHistogram)>,
    encoder: &mut DescriptorEncoder,
) -> std::fmt::Result {
    let mut series = series.peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (label, h) in series {
        // The encoder accumulates bucket counts itself: hand it per-bucket counts.
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = h
            .buckets
            .iter()
            .map(|(le, cumulative)| {
                let n = cumulative - below;
                below = *cumulative;
                (*le, n)
            })
            .collect();
        m.encode_family(&[label])?.encode_histogram::<NoLabelSet>(
            h.sum_seconds,
            h.count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

fn breaker_state(s: &BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

fn health_state(s: HealthState) -> &'static str {
    match s {
        HealthState::Active => "active",
        HealthState::Ejected => "ejected",
        HealthState::Probing => "probing",
    }
}
