//! Prometheus metrics (text exposition format 0.0.4) and `/healthz`, served
//! over HTTP/1.1 by `pitr run`.
//!
//! Two kinds of numbers, all labelled `source="<name>"`:
//! * live ones from each archiver's [`ArchiveProgress`] atomics (received and
//!   durable positions, uploads, errors, restarts), read at scrape time;
//! * repository ones from [`source_status`] (recoverable window, newest base
//!   backup, gaps, segment count), recomputed at most every `refresh`
//!   because they cost LIST requests.
//!
//! `pitr_archive_lag_seconds` is computed at scrape time as now minus the
//! newest durable commit time (the archiver's, else the repository's). An
//! idle database commits nothing, so its lag grows: alert on it together
//! with write activity, or with a generous threshold.
//!
//! `/healthz` answers 200 when every archiver is streaming and 503 (listing
//! the ones that are not) otherwise.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::archive::keys::SourceName;
use crate::archive::progress::ArchiveProgress;
use crate::monitor::status::{source_status, SourceStatus};
use crate::storage::Repo;

/// Live state of one archived source, shared with its supervisor.
#[derive(Debug)]
pub struct SourceMetrics {
    pub name: SourceName,
    pub progress: Arc<ArchiveProgress>,
    /// The archiver is running (not waiting to restart).
    pub up: AtomicBool,
    pub restarts: AtomicU64,
    pub backups_taken: AtomicU64,
    pub backup_failures: AtomicU64,
}

impl SourceMetrics {
    pub fn new(name: SourceName) -> SourceMetrics {
        SourceMetrics {
            name,
            progress: Arc::new(ArchiveProgress::default()),
            up: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            backups_taken: AtomicU64::new(0),
            backup_failures: AtomicU64::new(0),
        }
    }
}

type Cached = (Instant, HashMap<String, SourceStatus>, bool);

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    repo: Repo,
    sources: Vec<Arc<SourceMetrics>>,
    refresh: Duration,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

/// Escapes a label value (`\`, `"`, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, source: &str, v: f64) {
        let _ = writeln!(
            self.out,
            "{name}{{source=\"{}\"}} {}",
            label(source),
            fmt_f64(v)
        );
    }
}

fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Metrics {
    pub fn new(repo: Repo, sources: Vec<Arc<SourceMetrics>>, refresh: Duration) -> Metrics {
        Metrics {
            repo,
            sources,
            refresh,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    pub fn sources(&self) -> &[Arc<SourceMetrics>] {
        &self.sources
    }

    /// Repository status per source, at most `refresh` old; `false` when the
    /// last refresh failed.
    async fn statuses(&self) -> (HashMap<String, SourceStatus>, bool) {
        let mut cache = self.cache.lock().await;
        if let Some((at, map, ok)) = cache.as_ref() {
            if at.elapsed() < self.refresh {
                return (map.clone(), *ok);
            }
        }
        let mut map = HashMap::new();
        let mut ok = true;
        for s in &self.sources {
            match source_status(&self.repo, &s.name, Utc::now()).await {
                Ok(st) => {
                    map.insert(s.name.to_string(), st);
                }
                // A source whose identity is not written yet is not an error.
                Err(e) if e.to_string().ends_with("source.json is missing") => {}
                Err(e) => {
                    tracing::warn!(source = %s.name, "reading the repository status failed: {e:#}");
                    ok = false;
                }
            }
        }
        *cache = Some((Instant::now(), map.clone(), ok));
        (map, ok)
    }

    /// The `/metrics` body.
    pub async fn render(&self) -> String {
        let (statuses, repo_ok) = self.statuses().await;
        let now = Utc::now().timestamp_micros() as f64 / 1e6;
        let mut out = String::new();
        let mut f = Family { out: &mut out };
        type Getter<'a> = Box<dyn Fn(&SourceMetrics, Option<&SourceStatus>) -> Option<f64> + 'a>;
        let last_commit = |m: &SourceMetrics, st: Option<&SourceStatus>| -> Option<f64> {
            let live = m.progress.last_commit_micros.load(Ordering::Relaxed);
            let repo = st
                .and_then(|s| s.last_commit)
                .map(|t| t.timestamp_micros())
                .unwrap_or(0);
            let t = live.max(repo);
            (t != 0).then(|| t as f64 / 1e6)
        };
        let families: Vec<(&str, &str, &str, Getter)> = vec![
            (
                "pitr_archiver_up",
                "gauge",
                "1 when the source's archiver is streaming, 0 while it waits to restart.",
                Box::new(|m, _| {
                    Some(if m.up.load(Ordering::Relaxed) {
                        1.0
                    } else {
                        0.0
                    })
                }),
            ),
            (
                "pitr_archiver_restarts_total",
                "counter",
                "Times the source's archiver failed and was restarted.",
                Box::new(|m, _| Some(m.restarts.load(Ordering::Relaxed) as f64)),
            ),
            (
                "pitr_last_archived_commit_timestamp_seconds",
                "gauge",
                "Commit time of the newest transaction durable in the repository (Unix seconds).",
                Box::new(last_commit),
            ),
            (
                "pitr_archive_lag_seconds",
                "gauge",
                "Now minus the newest durable commit time; an idle database also grows this.",
                Box::new(move |m, st| last_commit(m, st).map(|t| (now - t).max(0.0))),
            ),
            (
                "pitr_recoverable_window_start_timestamp_seconds",
                "gauge",
                "Earliest restorable time (Unix seconds); absent without a usable base backup.",
                Box::new(|_, st| {
                    st.and_then(|s| s.window)
                        .map(|w| w.start.timestamp_micros() as f64 / 1e6)
                }),
            ),
            (
                "pitr_recoverable_window_end_timestamp_seconds",
                "gauge",
                "Latest restorable time (Unix seconds); absent without a usable base backup.",
                Box::new(|_, st| {
                    st.and_then(|s| s.window)
                        .map(|w| w.end.timestamp_micros() as f64 / 1e6)
                }),
            ),
            (
                "pitr_last_base_backup_timestamp_seconds",
                "gauge",
                "Stop time of the newest complete base backup (Unix seconds).",
                Box::new(|_, st| {
                    st.and_then(|s| s.newest_backup.as_ref())
                        .map(|b| b.stop_time.timestamp_micros() as f64 / 1e6)
                }),
            ),
            (
                "pitr_base_backups",
                "gauge",
                "Complete base backups in the repository.",
                Box::new(|_, st| st.map(|s| s.base_backups as f64)),
            ),
            (
                "pitr_gaps",
                "gauge",
                "Lost stretches of log (gap records and unexplained holes) in the repository.",
                Box::new(|_, st| st.map(|s| s.gaps.len() as f64)),
            ),
            (
                "pitr_repository_segments",
                "gauge",
                "Segments in the repository.",
                Box::new(|_, st| st.map(|s| s.segments as f64)),
            ),
            (
                "pitr_repository_segment_bytes",
                "gauge",
                "Bytes of the segments in the repository.",
                Box::new(|_, st| st.map(|s| s.bytes as f64)),
            ),
            (
                "pitr_segments_uploaded_total",
                "counter",
                "Segments stored by this process.",
                Box::new(|m, _| {
                    Some(m.progress.upload.segments_uploaded.load(Ordering::Relaxed) as f64)
                }),
            ),
            (
                "pitr_uploaded_bytes_total",
                "counter",
                "Segment bytes stored by this process.",
                Box::new(|m, _| {
                    Some(m.progress.upload.bytes_uploaded.load(Ordering::Relaxed) as f64)
                }),
            ),
            (
                "pitr_upload_errors_total",
                "counter",
                "Failed segment uploads (each retried) by this process.",
                Box::new(|m, _| {
                    Some(m.progress.upload.upload_errors.load(Ordering::Relaxed) as f64)
                }),
            ),
            (
                "pitr_gaps_detected_total",
                "counter",
                "Gaps this process detected and recorded.",
                Box::new(|m, _| Some(m.progress.gaps.load(Ordering::Relaxed) as f64)),
            ),
            (
                "pitr_received_position",
                "gauge",
                "Newest log position received from the server (PostgreSQL: LSN as a number).",
                Box::new(|m, _| Some(m.progress.received_lsn.load(Ordering::Relaxed) as f64)),
            ),
            (
                "pitr_durable_position",
                "gauge",
                "Newest log position durable in the repository (PostgreSQL: LSN as a number).",
                Box::new(|m, _| Some(m.progress.durable_lsn.load(Ordering::Relaxed) as f64)),
            ),
            (
                "pitr_lease_held",
                "gauge",
                "1 while this process holds the source's writer lease, else 0 (waiting for it, or lost).",
                Box::new(|m, _| {
                    Some(f64::from(
                        m.progress.lease_generation.load(Ordering::Relaxed) > 0,
                    ))
                }),
            ),
            (
                "pitr_lease_generation",
                "gauge",
                "Generation of the writer lease this process holds (0: none).",
                Box::new(|m, _| Some(m.progress.lease_generation.load(Ordering::Relaxed) as f64)),
            ),
            (
                "pitr_fenced_objects",
                "gauge",
                "Objects written after their archiver lost the writer lease (never used by a restore).",
                Box::new(|_, st| st.map(|s| s.fenced.len() as f64)),
            ),
            (
                "pitr_epoch",
                "gauge",
                "Current epoch of the archived log (PostgreSQL: timeline).",
                Box::new(|m, _| Some(m.progress.timeline.load(Ordering::Relaxed) as f64)),
            ),
            (
                "pitr_base_backups_taken_total",
                "counter",
                "Scheduled base backups this process completed.",
                Box::new(|m, _| Some(m.backups_taken.load(Ordering::Relaxed) as f64)),
            ),
            (
                "pitr_base_backup_failures_total",
                "counter",
                "Scheduled base backups this process failed to take.",
                Box::new(|m, _| Some(m.backup_failures.load(Ordering::Relaxed) as f64)),
            ),
        ];
        for (name, kind, help, get) in &families {
            f.head(name, kind, help);
            for m in &self.sources {
                let st = statuses.get(m.name.as_str());
                if let Some(v) = get(m, st) {
                    f.sample(name, m.name.as_str(), v);
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP pitr_repository_readable 1 when the last repository status refresh succeeded."
        );
        let _ = writeln!(out, "# TYPE pitr_repository_readable gauge");
        let _ = writeln!(out, "pitr_repository_readable {}", u8::from(repo_ok));
        out
    }

    /// `/healthz`: `(healthy, body)`.
    pub fn health(&self) -> (bool, String) {
        let down: Vec<&str> = self
            .sources
            .iter()
            .filter(|s| !s.up.load(Ordering::Relaxed))
            .map(|s| s.name.as_str())
            .collect();
        if down.is_empty() {
            (true, "ok\n".into())
        } else {
            (false, format!("not streaming: {}\n", down.join(", ")))
        }
    }
}

async fn handle(
    metrics: Arc<Metrics>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render().await,
        ),
        ("GET", "/healthz") => {
            let (ok, body) = metrics.health();
            let code = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, "text/plain; charset=utf-8", body)
        }
        ("GET", _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics or /healthz\n".into(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// Serves `/metrics` and `/healthz` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("metrics listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let m = metrics.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(m.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = conn => if let Err(e) = r { tracing::debug!("metrics connection: {e}") },
            }
        });
    }
}
