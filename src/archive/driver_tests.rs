//! The driver's loop against a scripted double of [`Connection`], in paused
//! virtual time: reconnects and their delays, the first connection, lost
//! leases, definite errors, a failed uploader, `Continue` and cancellation;
//! and the end of the work ([`run`]): the lease released, a loss or an error
//! reported in its order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::*;
use crate::archive::keys::{self, SourceName};
use crate::archive::lease::{Lease, LeaseOptions};
use crate::storage::Repo;

/// One scripted session.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Gets through, then ends like this.
    End(Ended),
    /// Fails like this (after getting through, when the flag is set).
    Fail(Failure, bool),
    /// Gets through, then the lease is lost and the session fails.
    LoseLease,
    /// Waits for cancellation, then shuts down.
    UntilCancelled,
}

struct Double {
    steps: VecDeque<Step>,
    /// When each session started (virtual time).
    started: Arc<Mutex<Vec<Instant>>>,
    through: bool,
    uploader_failed: bool,
    held: Held,
    /// The repository of the held lease.
    repo: Option<Repo>,
    /// What `classify` answers: the kind of the last scripted failure.
    kind: Failure,
}

impl Double {
    fn new(steps: &[Step], kind: Failure) -> Double {
        Double {
            steps: steps.iter().copied().collect(),
            started: Arc::default(),
            through: false,
            uploader_failed: false,
            held: Held {
                written: true,
                ..Held::new(Arc::default())
            },
            repo: None,
            kind,
        }
    }

    /// Holds `lease` of `repo`.
    fn hold(&mut self, repo: &Repo, lease: Lease) {
        self.held.guard = lease.guard();
        self.held.lease = Some(lease);
        self.repo = Some(repo.clone());
    }

    fn gaps(&self) -> Vec<u128> {
        let s = self.started.lock().map(|g| g.clone()).unwrap_or_default();
        s.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect()
    }
}

impl Connection for Double {
    async fn session(&mut self, cancel: &CancellationToken) -> anyhow::Result<Ended> {
        if let Ok(mut g) = self.started.lock() {
            g.push(Instant::now());
        }
        match self.steps.pop_front() {
            None => Err(anyhow!("the driver ran past the script")),
            Some(Step::End(e)) => {
                self.through = true;
                Ok(e)
            }
            Some(Step::Fail(kind, through)) => {
                self.kind = kind;
                self.through |= through;
                Err(anyhow!("scripted failure"))
            }
            Some(Step::LoseLease) => {
                self.through = true;
                let repo = self.repo.as_ref().ok_or_else(|| anyhow!("no lease"))?;
                let key = keys::writer_lease_key(&SourceName::new("d")?);
                let (body, v) = repo
                    .get_versioned(&key)
                    .await?
                    .ok_or_else(|| anyhow!("no lease object"))?;
                let mut rec: serde_json::Value = serde_json::from_slice(&body)?;
                rec["generation"] = 9.into();
                repo.put_if_version(&key, serde_json::to_vec(&rec)?.into(), &v)
                    .await?;
                self.held.guard.wait_lost().await;
                Err(anyhow!("upload refused: lease lost"))
            }
            Some(Step::UntilCancelled) => {
                self.through = true;
                cancel.cancelled().await;
                Ok(Ended::Shutdown)
            }
        }
    }

    fn classify(&self, _e: &anyhow::Error) -> Failure {
        self.kind
    }

    fn got_through(&self) -> bool {
        self.through
    }

    fn uploader_failed(&self) -> bool {
        self.uploader_failed
    }

    fn held(&self) -> &Held {
        &self.held
    }

    fn held_mut(&mut self) -> &mut Held {
        &mut self.held
    }

    fn durable(&mut self, _d: &crate::archive::pipeline::Durable) {}
}

/// A double (`kind`: what `classify` answers before any scripted failure).
fn double(steps: &[Step], kind: Failure) -> Double {
    Double::new(steps, kind)
}

#[tokio::test(start_paused = true)]
async fn transient_errors_reconnect_with_a_doubling_delay_reset_by_continue() {
    let through = Step::Fail(Failure::Transient, true);
    let mut d = double(
        &[
            Step::End(Ended::Continue),
            through,
            through,
            through,
            Step::End(Ended::Continue),
            through,
            Step::End(Ended::Done),
        ],
        Failure::Transient,
    );
    drive(&mut d, &CancellationToken::new()).await.unwrap();
    assert_eq!(d.gaps(), vec![0, 250, 500, 1000, 0, 250]);
}

#[tokio::test(start_paused = true)]
async fn the_delay_is_capped_and_busy_resources_are_retried_soon() {
    let mut steps = vec![Step::Fail(Failure::Transient, true); 9];
    steps.push(Step::End(Ended::Done));
    let mut d = double(&steps, Failure::Transient);
    drive(&mut d, &CancellationToken::new()).await.unwrap();
    let gaps = d.gaps();
    assert_eq!(gaps.last(), Some(&30_000), "{gaps:?}");
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
    let mut steps = vec![Step::Fail(Failure::Busy, true); 5];
    steps.push(Step::End(Ended::Done));
    let mut d = double(&steps, Failure::Busy);
    drive(&mut d, &CancellationToken::new()).await.unwrap();
    assert_eq!(d.gaps(), vec![250, 500, 1000, 2000, 2000]);
}

#[tokio::test(start_paused = true)]
async fn a_first_connection_that_fails_is_reported_not_retried() {
    let mut d = double(&[Step::Fail(Failure::Transient, false)], Failure::Transient);
    let e = drive(&mut d, &CancellationToken::new()).await.unwrap_err();
    assert_eq!(e.to_string(), "scripted failure");
    assert_eq!(d.gaps().len(), 0, "one session only");
    // A busy resource is waited for even before the first session.
    let mut d = double(
        &[Step::Fail(Failure::Busy, false), Step::End(Ended::Done)],
        Failure::Busy,
    );
    drive(&mut d, &CancellationToken::new()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn definite_errors_and_a_failed_uploader_stop_the_archiver() {
    let mut d = double(
        &[
            Step::End(Ended::Continue),
            Step::Fail(Failure::Definite, true),
        ],
        Failure::Definite,
    );
    assert!(drive(&mut d, &CancellationToken::new()).await.is_err());
    let mut d = double(
        &[
            Step::End(Ended::Continue),
            Step::Fail(Failure::Transient, true),
        ],
        Failure::Transient,
    );
    d.uploader_failed = true;
    assert!(drive(&mut d, &CancellationToken::new()).await.is_err());
    assert_eq!(d.gaps(), vec![0]);
}

#[tokio::test]
async fn a_holder_that_lost_its_lease_never_reconnects() {
    let repo = Repo::open("memory://").await.unwrap();
    let cancel = CancellationToken::new();
    let opts = LeaseOptions {
        ttl: Duration::from_millis(600),
        wait: false,
        single_writer: false,
    };
    let lease = Lease::acquire(&repo, &SourceName::new("d").unwrap(), opts, &cancel)
        .await
        .unwrap();
    let mut d = double(
        &[Step::LoseLease, Step::End(Ended::Done)],
        Failure::Transient,
    );
    d.hold(&repo, lease);
    let e = drive(&mut d, &cancel).await.unwrap_err();
    assert!(
        e.to_string().starts_with("lost the writer lease of d"),
        "{e}"
    );
    assert_eq!(d.steps.len(), 1, "no session after the loss");
}

#[tokio::test(start_paused = true)]
async fn cancellation_ends_a_backoff_and_a_session() {
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let mut d = double(
        &[
            Step::End(Ended::Continue),
            Step::Fail(Failure::Transient, true),
            Step::End(Ended::Done),
        ],
        Failure::Transient,
    );
    // Cancelled during the backoff after the failure: no further session.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c2.cancel();
    });
    drive(&mut d, &cancel).await.unwrap();
    assert_eq!(d.steps.len(), 1);
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let mut d = double(&[Step::UntilCancelled], Failure::Transient);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        c2.cancel();
    });
    drive(&mut d, &cancel).await.unwrap();
    assert!(d.steps.is_empty());
}

/// A lease of source `d` in a fresh in-memory repository.
async fn held_lease(cancel: &CancellationToken) -> (Repo, Lease) {
    let repo = Repo::open("memory://").await.unwrap();
    let opts = LeaseOptions {
        ttl: Duration::from_secs(30),
        wait: false,
        single_writer: false,
    };
    let lease = Lease::acquire(&repo, &SourceName::new("d").unwrap(), opts, cancel)
        .await
        .unwrap();
    (repo, lease)
}

/// The `released` flag of the lease object of `d`.
async fn released(repo: &Repo) -> Option<bool> {
    let key = keys::writer_lease_key(&SourceName::new("d").unwrap());
    let (body, _) = repo.get_versioned(&key).await.unwrap()?;
    let rec: serde_json::Value = serde_json::from_slice(&body).unwrap();
    Some(rec["released"].as_bool().unwrap_or(false))
}

#[tokio::test]
async fn the_end_of_the_work_releases_the_lease_and_words_the_error() {
    let cancel = CancellationToken::new();
    // Done: the lease is released for a successor, no error.
    let (repo, lease) = held_lease(&cancel).await;
    let mut d = double(&[Step::End(Ended::Done)], Failure::Transient);
    d.hold(&repo, lease);
    run(&mut d, &cancel, |e| e).await.unwrap();
    assert_eq!(released(&repo).await, Some(true));
    assert_eq!(
        d.held
            .progress
            .lease_generation
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // A definite error: released too, and reported in the engine's words.
    let (repo, lease) = held_lease(&cancel).await;
    let mut d = double(&[Step::Fail(Failure::Definite, true)], Failure::Definite);
    d.hold(&repo, lease);
    let e = run(&mut d, &cancel, |e| anyhow!("archiving d stopped: {e}"))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "archiving d stopped: scripted failure");
    assert_eq!(released(&repo).await, Some(true));
    // Nothing written under it: the lease goes without a trace.
    let (repo, lease) = held_lease(&cancel).await;
    let mut d = double(&[Step::End(Ended::Done)], Failure::Transient);
    d.hold(&repo, lease);
    d.held.written = false;
    run(&mut d, &cancel, |e| e).await.unwrap();
    assert_eq!(released(&repo).await, None);
}

#[tokio::test]
async fn a_lost_lease_is_reported_before_the_sessions_error_and_not_released() {
    let cancel = CancellationToken::new();
    let (repo, lease) = held_lease(&cancel).await;
    let mut d = double(&[Step::LoseLease], Failure::Transient);
    d.hold(&repo, lease);
    let e = run(&mut d, &cancel, |e| anyhow!("archiving d stopped: {e}"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().starts_with("lost the writer lease of d"),
        "{e}"
    );
    // The successor's lease object is left as it is.
    assert_eq!(released(&repo).await, Some(false));
}

#[tokio::test]
async fn writing_starts_once_and_gaps_are_recorded_only_under_the_lease() {
    use crate::archive::gaps::GapRecord;
    use pitr_segment::{Engine, Epoch, LogPos};

    let cancel = CancellationToken::new();
    let (repo, lease) = held_lease(&cancel).await;
    let source = SourceName::new("d").unwrap();
    let mut held = Held::new(Arc::default());
    held.guard = lease.guard();
    held.lease = Some(lease);
    let writing = |system_id: &'static str| Writing {
        repo: &repo,
        source: &source,
        engine: Engine::MySql,
        system_id,
        zstd_level: 1,
        uploader: UploaderOptions::default(),
        initial: None,
        reuse: Vec::new(),
    };
    held.start_writing(writing("server-a")).await.unwrap();
    assert!(held.written && held.uploader.is_some());
    let stored = crate::archive::identity::read_identity(&repo, &source)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.system_id, "server-a");
    // A second call changes nothing (it would refuse another identity).
    held.start_writing(writing("server-b")).await.unwrap();

    let gap = |start: u64| GapRecord {
        epoch: Epoch(1),
        start: LogPos::new(1, start),
        end: LogPos::new(2, 4),
        reason: "test".into(),
        detected_at: chrono::Utc::now(),
        generation: held.guard.generation(),
    };
    held.record_gap(&repo, &source, &gap(4)).await.unwrap();
    assert_eq!(gap_objects(&repo).await, 1);
    assert_eq!(
        held.progress
            .gaps
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Lose the lease: the next gap is refused and nothing is written.
    let key = keys::writer_lease_key(&source);
    let (body, v) = repo.get_versioned(&key).await.unwrap().unwrap();
    let mut rec: serde_json::Value = serde_json::from_slice(&body).unwrap();
    rec["generation"] = 9.into();
    repo.put_if_version(&key, serde_json::to_vec(&rec).unwrap().into(), &v)
        .await
        .unwrap();
    held.guard.wait_lost().await;
    assert!(held.record_gap(&repo, &source, &gap(8)).await.is_err());
    assert_eq!(gap_objects(&repo).await, 1);
    assert_eq!(
        held.progress
            .gaps
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    if let Some(up) = held.uploader.take() {
        let _ = up.finish().await;
    }
}

/// How many gap records the repository holds.
async fn gap_objects(repo: &Repo) -> usize {
    repo.list("")
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.location.as_ref().contains("/gaps/"))
        .count()
}
