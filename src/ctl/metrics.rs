//! The Prometheus metrics of a mount, built from its status with the
//! `prometheus-client` crate: ever-growing counts are counters (`_total`),
//! states and levels are gauges, the per-replica request latency is a
//! histogram. Served by `chironctl metrics` and the `/metrics` listener.

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::fs::FsStatus;
use crate::fs::status::ReplicaStatus;

/// The classic text format (0.0.4), which the textfile collector, promtool
/// and every scraper read.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// OpenMetrics, for a scraper that asks for it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
    id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    replica: String,
    id: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

fn labels(r: &ReplicaStatus) -> ReplicaLabels {
    ReplicaLabels {
        replica: r.path.clone(),
        id: r.id.clone(),
    }
}

/// Encodes one status snapshot on every scrape.
#[derive(Debug)]
struct StatusCollector(FsStatus);

type Fmt = Result<(), std::fmt::Error>;

impl StatusCollector {
    fn gauge(&self, enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Fmt {
        enc.encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&v)
    }

    fn per_replica(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        ty: MetricType,
        v: impl Fn(&ReplicaStatus) -> u64,
    ) -> Fmt {
        let mut m = enc.encode_descriptor(name, help, None, ty)?;
        for r in &self.0.replicas {
            let l = labels(r);
            let mut f = m.encode_family(&l)?;
            match ty {
                MetricType::Counter => f.encode_counter::<NoLabelSet, u64, u64>(&v(r), None)?,
                _ => f.encode_gauge(&v(r))?,
            }
        }
        Ok(())
    }
}

impl prometheus_client::collector::Collector for StatusCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        let st = &self.0;
        {
            let mut m = enc.encode_descriptor(
                "chironfs_build_info",
                "The chironfs version serving this mount (always 1).",
                None,
                MetricType::Gauge,
            )?;
            let l = BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            m.encode_family(&l)?.encode_gauge(&1i64)?;
        }
        self.gauge(
            &mut enc,
            "chironfs_write_quorum",
            "Replicas a write needs.",
            st.write_quorum as i64,
        )?;
        self.gauge(
            &mut enc,
            "chironfs_pending_paths",
            "Paths with a mutation possibly in flight.",
            st.pending as i64,
        )?;
        self.per_replica(
            &mut enc,
            "chironfs_replica_in_sync",
            "1 if the replica is in sync and serves reads.",
            MetricType::Gauge,
            |r| (r.state == "in-sync") as u64,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "chironfs_replica_state",
                "The replica's state: 1 for the state it is in, 0 for the others.",
                None,
                MetricType::Gauge,
            )?;
            for r in &st.replicas {
                for s in ["in-sync", "resyncing", "failed", "disabled"] {
                    let l = StateLabels {
                        replica: r.path.clone(),
                        id: r.id.clone(),
                        state: s.to_string(),
                    };
                    m.encode_family(&l)?
                        .encode_gauge(&((r.state == s) as i64))?;
                }
            }
        }
        self.per_replica(
            &mut enc,
            "chironfs_replica_missed_paths",
            "Paths the replica missed and still needs.",
            MetricType::Gauge,
            |r| r.missed,
        )?;
        self.per_replica(
            &mut enc,
            "chironfs_replica_in_flight",
            "Requests in flight on the replica.",
            MetricType::Gauge,
            |r| r.in_flight,
        )?;
        self.per_replica(
            &mut enc,
            "chironfs_replica_open_handles",
            "Open files whose reads the replica serves.",
            MetricType::Gauge,
            |r| r.open_handles,
        )?;
        // Counters: the encoder appends `_total`.
        self.per_replica(
            &mut enc,
            "chironfs_replica_reads",
            "Read-side operations sent to the replica since the mount.",
            MetricType::Counter,
            |r| r.reads,
        )?;
        self.per_replica(
            &mut enc,
            "chironfs_replica_writes",
            "Mutations sent to the replica since the mount.",
            MetricType::Counter,
            |r| r.writes,
        )?;
        self.per_replica(
            &mut enc,
            "chironfs_replica_resync_bytes",
            "Bytes copied onto the replica by resyncs since the mount.",
            MetricType::Counter,
            |r| r.resync_bytes_total,
        )?;
        self.per_replica(
            &mut enc,
            "chironfs_replica_resync_entries",
            "Entries (files, directories, links) resynced onto the replica since the mount.",
            MetricType::Counter,
            |r| r.resync_entries_total,
        )?;
        self.per_replica(
            &mut enc,
            "chironfs_resync_bytes_done",
            "Bytes copied by the resync in progress (0 when none runs).",
            MetricType::Gauge,
            |r| r.resync.as_ref().map_or(0, |p| p.bytes_done),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "chironfs_replica_latency_seconds",
                "Time a request to the replica took.",
                None,
                MetricType::Histogram,
            )?;
            for r in &st.replicas {
                let h = &r.latency;
                let bounds = h.bounds_s.iter().copied().chain([f64::INFINITY]);
                let buckets: Vec<(f64, u64)> = bounds.zip(h.counts.iter().copied()).collect();
                if buckets.is_empty() {
                    continue;
                }
                let count = h.counts.iter().sum();
                let l = labels(r);
                m.encode_family(&l)?
                    .encode_histogram::<NoLabelSet>(h.sum_s, count, &buckets, None)?;
            }
        }
        Ok(())
    }
}

fn registry(st: &FsStatus) -> Registry {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(StatusCollector(st.clone())));
    reg
}

/// The classic Prometheus text format.
pub fn prometheus_text(st: &FsStatus) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry(st));
    out
}

/// OpenMetrics text (ends with `# EOF`).
pub fn openmetrics(st: &FsStatus) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry(st));
    out
}
