//! `GET /metrics`: the server's counters in the OpenMetrics text format (prometheus-client), which
//! Prometheus scrapes: requests by route and status, tokens in and out, time to first token and
//! per-token latency, connections, and the engine's load read at scrape time.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use model::EngineStats;

/// The Content-Type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    sha256: String,
}

/// Every metric of a server (cheap to update from any thread).
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    prompt_tokens: Counter,
    completion_tokens: Counter,
    time_to_first_token: Histogram,
    time_per_output_token: Histogram,
    open_connections: Gauge,
    rejected_connections: Counter,
    queued: Gauge,
    active: Gauge,
    kv_tokens: Gauge,
    kv_capacity_tokens: Gauge,
}

impl Metrics {
    pub fn new(model: &str, sha256: &str) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("nanochat");
        let metrics = Metrics {
            requests: Family::default(),
            prompt_tokens: Counter::default(),
            completion_tokens: Counter::default(),
            // 5 ms to 20 s, and 1 ms to 2 s: a prompt can wait in the queue; a decode step of a
            // small model takes milliseconds, of a 2B one on one core about a hundred.
            time_to_first_token: Histogram::new(exponential_buckets(0.005, 2.0, 13)),
            time_per_output_token: Histogram::new(exponential_buckets(0.001, 2.0, 12)),
            open_connections: Gauge::default(),
            rejected_connections: Counter::default(),
            queued: Gauge::default(),
            active: Gauge::default(),
            kv_tokens: Gauge::default(),
            kv_capacity_tokens: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by route pattern and status code",
            metrics.requests.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens of the generation requests started",
            metrics.prompt_tokens.clone(),
        );
        r.register(
            "completion_tokens",
            "Tokens generated",
            metrics.completion_tokens.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "From a generation request's arrival to its first text",
            metrics.time_to_first_token.clone(),
        );
        r.register(
            "time_per_output_token_seconds",
            "Mean time between a request's generated tokens after the first",
            metrics.time_per_output_token.clone(),
        );
        r.register(
            "open_connections",
            "Client connections open now",
            metrics.open_connections.clone(),
        );
        r.register(
            "rejected_connections",
            "Connections refused because --max-connections were open",
            metrics.rejected_connections.clone(),
        );
        r.register(
            "queued_requests",
            "Generation requests waiting for an engine slot",
            metrics.queued.clone(),
        );
        r.register(
            "active_sequences",
            "Sequences in the engine's running batch",
            metrics.active.clone(),
        );
        r.register(
            "kv_cache_tokens",
            "Positions held in the running sequences' KV caches",
            metrics.kv_tokens.clone(),
        );
        r.register(
            "kv_cache_capacity_tokens",
            "Positions the KV caches can hold at most (every slot at the full context)",
            metrics.kv_capacity_tokens.clone(),
        );
        let info = Family::<ModelLabels, Gauge>::default();
        info.get_or_create(&ModelLabels {
            model: model.to_string(),
            sha256: sha256.to_string(),
        })
        .set(1);
        r.register("model_info", "The served model and its SHA-256", info);
        Arc::new(Metrics {
            registry,
            ..metrics
        })
    }

    /// Counts one answered request.
    pub fn request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    pub fn prompt_tokens(&self, n: usize) {
        self.prompt_tokens.inc_by(n as u64);
    }

    /// One finished generation: its tokens, its time to first token and, past the first, the
    /// mean time per token (seconds).
    pub fn generation(&self, completion_tokens: usize, first_token: Option<f64>, rest: f64) {
        self.completion_tokens.inc_by(completion_tokens as u64);
        if let Some(first) = first_token {
            self.time_to_first_token.observe(first);
            if completion_tokens > 1 {
                self.time_per_output_token
                    .observe(rest / (completion_tokens - 1) as f64);
            }
        }
    }

    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    pub fn connection_rejected(&self) {
        self.rejected_connections.inc();
    }

    /// The exposition, the engine's gauges read from `stats` now.
    pub fn render(&self, stats: EngineStats) -> String {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.queued.set(gauge(stats.queued));
        self.active.set(gauge(stats.active));
        self.kv_tokens.set(gauge(stats.kv_tokens));
        self.kv_capacity_tokens.set(gauge(stats.kv_capacity_tokens));
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, sample: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn counts_render_as_openmetrics() {
        let m = Metrics::new("tiny", "ab12");
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 200);
        m.request("other", 404);
        m.prompt_tokens(7);
        m.generation(5, Some(0.02), 0.04);
        m.generation(0, None, 0.0);
        m.connection_opened();
        let text = m.render(EngineStats {
            active: 1,
            queued: 2,
            max_batch: 4,
            kv_tokens: 30,
            kv_capacity_tokens: 1024,
        });
        let requests = "nanochat_http_requests_total";
        assert_eq!(
            value(
                &text,
                &format!(r#"{requests}{{route="/v1/completions",status="200"}}"#)
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                &format!(r#"{requests}{{route="other",status="404"}}"#)
            ),
            1.0
        );
        assert_eq!(value(&text, "nanochat_prompt_tokens_total"), 7.0);
        assert_eq!(value(&text, "nanochat_completion_tokens_total"), 5.0);
        assert_eq!(
            value(&text, "nanochat_time_to_first_token_seconds_count"),
            1.0
        );
        assert_eq!(
            value(&text, "nanochat_time_per_output_token_seconds_sum"),
            0.01
        );
        assert_eq!(value(&text, "nanochat_queued_requests"), 2.0);
        assert_eq!(value(&text, "nanochat_kv_cache_capacity_tokens"), 1024.0);
        assert_eq!(value(&text, "nanochat_open_connections"), 1.0);
        assert_eq!(
            value(&text, r#"nanochat_model_info{model="tiny",sha256="ab12"}"#),
            1.0
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
