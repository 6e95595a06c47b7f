//! The metrics registry: the process collector (`process_resident_memory_bytes` and friends),
//! HTTP request counters and latency histograms labelled by route template, and client gauges.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_request_duration: HistogramVec,
    clients: IntGauge,
    clients_connected: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");
        let http_requests = IntCounterVec::new(
            Opts::new(
                "rally_http_requests_total",
                "HTTP requests answered, by route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let http_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "rally_http_request_duration_seconds",
                "Time to answer an HTTP request, by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["method", "route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(http_requests.clone()))
            .expect("metric registers once");
        registry
            .register(Box::new(http_request_duration.clone()))
            .expect("metric registers once");
        let clients =
            IntGauge::new("rally_clients", "Live clients held by this node").expect("valid metric");
        let clients_connected = IntGauge::new(
            "rally_clients_connected",
            "Clients with an open socket or long-poll on this node",
        )
        .expect("valid metric");
        for gauge in [&clients, &clients_connected] {
            registry
                .register(Box::new(gauge.clone()))
                .expect("metric registers once");
        }
        Self {
            registry,
            http_requests,
            http_request_duration,
            clients,
            clients_connected,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// One request answered.
    pub fn observe_request(&self, method: &str, route: &str, status: &str, seconds: f64) {
        self.http_requests
            .with_label_values(&[method, route, status])
            .inc();
        self.http_request_duration
            .with_label_values(&[method, route])
            .observe(seconds);
    }

    /// The clients this node holds, and how many of them are connected.
    pub fn set_clients(&self, live: usize, connected: usize) {
        self.clients.set(live as i64);
        self.clients_connected.set(connected as i64);
    }
}
