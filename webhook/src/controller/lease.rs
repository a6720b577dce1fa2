//! Leader election through a `coordination.k8s.io/v1` Lease: one replica holds it and renews it;
//! another takes it over only once it has expired. Writes go through `replace` with the
//! resourceVersion just read, so two replicas racing for it cannot both win.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::Notify;

/// Whether this replica leads; shared with the reconciler.
#[derive(Clone, Default)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    fn set(&self, v: bool) -> bool {
        self.0.swap(v, Ordering::AcqRel)
    }
}

/// Holds the lease: returns whether `identity` holds it after this attempt.
async fn try_hold(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    duration: Duration,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let secs = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity.to_string()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
            let held_for = spec.lease_duration_seconds.map_or(secs, |s| s.max(1));
            let expired = spec.renew_time.as_ref().is_none_or(|t| {
                t.0.saturating_add(SignedDuration::from_secs(i64::from(held_for)))
                    .is_ok_and(|end| end < now)
            });
            let mine = holder.as_deref() == Some(identity);
            if !(mine || holder.is_none() || expired) {
                return Ok(false);
            }
            if !mine {
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.holder_identity = Some(identity.to_string());
            spec.lease_duration_seconds = Some(secs);
            spec.renew_time = Some(MicroTime(now));
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Campaigns for the lease forever: renews every third of `duration`, steps down when a renewal
/// has not succeeded for two thirds of it (before anyone else may take it). `changed` is
/// notified whenever leadership is gained.
pub async fn campaign(
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    leadership: Leadership,
    changed: Arc<Notify>,
) {
    let period = (duration / 3).max(Duration::from_millis(200));
    let deadline = duration * 2 / 3;
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        match try_hold(&api, &name, &identity, duration).await {
            Ok(true) => {
                last_renewed = Some(tokio::time::Instant::now());
                if !leadership.set(true) {
                    tracing::info!(lease = name, identity, "leadership acquired");
                    changed.notify_one();
                }
            }
            Ok(false) => {
                last_renewed = None;
                if leadership.set(false) {
                    tracing::warn!(lease = name, identity, "leadership lost");
                }
            }
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "lease renewal failed");
                if last_renewed.is_none_or(|t| t.elapsed() > deadline) && leadership.set(false) {
                    tracing::warn!(lease = name, identity, "leadership lost (renewal deadline)");
                }
            }
        }
        let wait = if leadership.is_leader() {
            period
        } else {
            // A follower polls a little faster than the holder renews, to take over promptly.
            period.min(Duration::from_secs(2))
        };
        tokio::time::sleep(wait).await;
    }
}

/// Gives the lease up (holder cleared) so another replica takes over without waiting for it to
/// expire. Best effort, on shutdown.
pub async fn release(api: &Api<Lease>, name: &str, identity: &str) {
    if let Ok(Some(mut lease)) = api.get_opt(name).await
        && let Some(spec) = lease.spec.as_mut()
        && spec.holder_identity.as_deref() == Some(identity)
    {
        spec.holder_identity = None;
        if let Err(e) = api.replace(name, &PostParams::default(), &lease).await {
            tracing::debug!(error = %e, "lease release failed");
        }
    }
}
