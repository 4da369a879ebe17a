//! `GET /metrics`: every counter of the loop threads, their backends and the feed, in the Prometheus text format
//! (`metrics`), one series per loop thread (label `loop`). Read at scrape time from the per-thread stats
//! (`ShardStats`, `IoStats`, `FeedStats`); nothing here runs on the message path.

use super::stats::{HealthStatus, ShardStats, Shared};
use crate::metrics::{self, Exposition, Kind};
use crate::reactor::IoStats;
use crate::upstream::{FeedStats, UpstreamState};

impl Shared {
    /// The `/metrics` body.
    pub fn metrics_text(&self) -> String {
        let mut out = Exposition::new();
        let (health, _) = self.health_status();
        out.family("wsgate_health_status", "What /healthz answers now (1 for the current status).", Kind::Gauge);
        for status in HealthStatus::ALL {
            out.sample("wsgate_health_status", "", &[("status", status.as_str())], u64::from(status == health));
        }
        out.family("wsgate_info", "The running gateway: version and I/O backend (always 1).", Kind::Gauge);
        out.sample("wsgate_info", "", &[("version", env!("CARGO_PKG_VERSION")), ("io", self.io_backend)], 1);
        out.gauge("wsgate_uptime_seconds", "Seconds since the gateway started.", self.started.elapsed().as_secs());
        out.gauge("wsgate_loop_threads", "Loop threads serving clients.", self.shards.len() as u64);
        let mem = super::memory::usage();
        if let Some(rss) = mem.rss {
            out.gauge("wsgate_rss_bytes", "Resident set size of the process.", rss);
        }
        if let Some(live) = mem.heap_live {
            out.gauge("wsgate_heap_live_bytes", "Heap bytes in use (glibc mallinfo2).", live);
        }
        if let Some(free) = mem.heap_free {
            out.gauge("wsgate_heap_free_bytes", "Freed heap bytes the allocator keeps for reuse.", free);
        }

        let ids: Vec<String> = (0..self.shards.len()).map(|i| i.to_string()).collect();
        let labels: Vec<[(&str, &str); 1]> = ids.iter().map(|id| [("loop", id.as_str())]).collect();
        let shards: Vec<(&[(&str, &str)], &ShardStats)> =
            labels.iter().zip(self.shards.iter()).map(|(l, s)| (&l[..], s)).collect();
        metrics::render(ShardStats::METRICS, &shards, &mut out);
        let io: Vec<(&[(&str, &str)], &IoStats)> =
            labels.iter().zip(self.io.iter()).map(|(l, s)| (&l[..], &**s)).collect();
        metrics::render(IoStats::METRICS, &io, &mut out);

        // Without a feed its metrics are still there (zero): dashboards and alerts see the same names everywhere.
        let idle = FeedStats::default();
        let feed = self.feed.as_deref().unwrap_or(&idle);
        let state = feed.upstream_state();
        out.family(
            "wsgate_upstream_state",
            "State of the upstream connection (1 for the current state; disabled: no upstream configured).",
            Kind::Gauge,
        );
        for s in [UpstreamState::Disabled, UpstreamState::Connecting, UpstreamState::Connected, UpstreamState::Backoff]
        {
            out.sample("wsgate_upstream_state", "", &[("state", s.as_str())], u64::from(s == state));
        }
        metrics::render(FeedStats::METRICS, &[(&[], feed)], &mut out);
        out.finish()
    }

    /// The complete `/metrics` response.
    pub fn metrics_response(&self) -> Vec<u8> {
        crate::proto::handshake::http_response_with(
            200,
            metrics::CONTENT_TYPE,
            "Cache-Control: no-store\r\n",
            self.metrics_text().as_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::conn::AddrSource;
    use crate::metrics::LabelSet;
    use crate::shard::stats::{GapKind, LoadRefusal, ProxyRefusal, Refusal, Transport};

    fn shared(loops: usize) -> Shared {
        Shared {
            shutdown: AtomicBool::new(false),
            stop_mode: std::sync::atomic::AtomicU8::new(0),
            shards: (0..loops).map(|_| ShardStats::default()).collect(),
            feed: None,
            publish: None,
            started: Instant::now(),
            io_backend: "epoll",
            io: (0..loops).map(|_| Arc::new(IoStats::default())).collect(),
            admission: crate::shard::admission::Admission::from_config(&crate::config::Config::default()),
        }
    }

    #[test]
    fn label_sets_have_as_many_values_as_counters() {
        let s = ShardStats::default();
        assert_eq!(Transport::values().len(), 3);
        assert_eq!(Refusal::values().len(), 13);
        assert_eq!(GapKind::values().len(), 2);
        assert_eq!(LoadRefusal::values().len(), 7);
        assert_eq!(ProxyRefusal::values().len(), 4);
        assert_eq!(AddrSource::values().len(), 5);
        assert_eq!(AddrSource::values()[AddrSource::XRealIp as usize], "x_real_ip");
        assert_eq!(ProxyRefusal::values()[ProxyRefusal::Timeout as usize], "timeout");
        assert_eq!(Refusal::values()[Refusal::index(503)], "503");
        assert_eq!(Refusal::values()[Refusal::index(418)], "other");
        s.refused(418);
        assert_eq!(s.http_refused.get(12), 1);
    }

    #[test]
    fn the_scrape_is_well_formed_and_carries_every_declared_metric_per_loop() {
        let shared = shared(2);
        shared.shards[1].opened(Transport::Sse);
        shared.shards[1].refused(404);
        shared.shards[0].loop_pass_seconds.observe(Duration::from_micros(70));
        IoStats::add(&shared.io[1].sent_bytes, 1234);
        let text = shared.metrics_text();
        crate::metrics::tests::check_format(&text);
        for m in ShardStats::METRICS {
            assert!(text.contains(&format!("# TYPE {} ", m.name)), "{} missing", m.name);
        }
        for m in IoStats::METRICS {
            assert!(text.contains(&format!("# TYPE {} ", m.name)), "{} missing", m.name);
        }
        for m in FeedStats::METRICS {
            assert!(text.contains(&format!("# TYPE {} ", m.name)), "{} missing (no feed: zeros)", m.name);
        }
        for line in [
            "wsgate_open_connections{loop=\"1\",transport=\"sse\"} 1",
            "wsgate_opened_connections_total{loop=\"1\",transport=\"sse\"} 1",
            "wsgate_http_refused_total{loop=\"1\",status=\"404\"} 1",
            "wsgate_loop_pass_seconds_bucket{loop=\"0\",le=\"0.0001\"} 1",
            "wsgate_io_sent_bytes_total{loop=\"1\"} 1234",
            "wsgate_health_status{status=\"ok\"} 1",
            "wsgate_upstream_state{state=\"disabled\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?}");
        }
    }

    #[test]
    fn health_turns_draining_with_503_when_shutdown_starts() {
        let shared = shared(1);
        assert_eq!(shared.health_status(), (HealthStatus::Ok, None));
        assert!(shared.health_response().starts_with(b"HTTP/1.1 200 "));
        shared.shutdown.store(true, Relaxed);
        assert_eq!(shared.health_status().0, HealthStatus::Draining);
        let response = String::from_utf8(shared.health_response()).unwrap();
        assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
        assert!(response.contains("\"status\":\"draining\""), "{response}");
        assert!(shared.metrics_text().contains("wsgate_health_status{status=\"draining\"} 1"));
    }
}
