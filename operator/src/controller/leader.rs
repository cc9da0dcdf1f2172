//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator
//! replicas can run and only one reconciles.
//!
//! Written against the Lease API directly: the maintained crate
//! (`kube-lease-manager`) requires kube 5, and `kube-leader-election` takes
//! over an expired lease with a merge patch that has no resourceVersion
//! precondition, so two candidates can both believe they won. Here every
//! take-over and renewal is a `replace` carrying the resourceVersion that was
//! read: of two racing candidates exactly one succeeds, the other gets 409.
//!
//! Protocol (as client-go's leaderelection): the holder renews every
//! `renew_every`; a candidate takes over when `renewTime +
//! leaseDurationSeconds` has passed. A holder that could not renew for
//! `renew_deadline` (shorter than the lease duration) stops reconciling
//! before anyone else may take over.
//!
//! Every API call of an attempt is bounded by the renew deadline, and a
//! renewal counts from the start of the attempt that made it (the
//! `renewTime` written is taken then too): a call that hangs can therefore
//! never keep this replica reconciling past the point where another replica
//! could take the lease over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where the lease lives, who we are, and the timing.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace (the operator's own).
    pub namespace: String,
    /// This replica's identity, usually the pod name.
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the holder may fail to renew before it stops reconciling.
    pub renew_deadline: Duration,
    /// How often the holder renews and a candidate retries.
    pub retry_period: Duration,
}

/// Why one attempt to acquire or renew the lease failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The Lease API answered with an error or could not be reached.
    #[error("lease request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The API did not answer before the renew deadline; the attempt was
    /// abandoned so that leadership cannot outlive the lease.
    #[error("lease request did not finish before the renew deadline")]
    DeadlineExceeded,
}

/// Acquires and renews one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

/// Outcome of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease now.
    Leading,
    /// Someone else holds a valid lease, or won a race against us.
    Following,
}

impl LeaderElector {
    /// An elector for the lease in `settings`.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    /// One attempt to acquire or renew the lease, given the renew deadline
    /// to finish in.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, LeaseError> {
        self.try_acquire_or_renew_until(Instant::now() + self.settings.renew_deadline)
            .await
    }

    /// One attempt to acquire or renew the lease; every API call is
    /// abandoned with [`LeaseError::DeadlineExceeded`] at `deadline`.
    pub async fn try_acquire_or_renew_until(
        &self,
        deadline: Instant,
    ) -> Result<Attempt, LeaseError> {
        let now = Timestamp::now();
        let duration_secs =
            i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = before(deadline, self.api.get_opt(&self.settings.name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.settings.identity.clone()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_duration_seconds: Some(duration_secs),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match before(deadline, self.api.create(&PostParams::default(), &lease)).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(LeaseError::Kube(kube::Error::Api(status))) if status.code == 409 => {
                    Ok(Attempt::Following)
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.settings.identity;
        if !ours && !holder.is_empty() && !expired(spec, now) {
            return Ok(Attempt::Following);
        }
        if !ours {
            spec.holder_identity = Some(self.settings.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration_secs);
        // The resourceVersion read above makes this a compare-and-swap.
        match before(
            deadline,
            self.api
                .replace(&self.settings.name, &PostParams::default(), &lease),
        )
        .await
        {
            Ok(_) => Ok(Attempt::Leading),
            Err(LeaseError::Kube(kube::Error::Api(status))) if status.code == 409 => {
                Ok(Attempt::Following)
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up so another replica can take over at once.
    ///
    /// Bounded by the renew deadline so a hung API cannot hold up shutdown;
    /// an unreleased lease simply expires.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let deadline = Instant::now() + self.settings.renew_deadline;
        let Some(mut lease) = before(deadline, self.api.get_opt(&self.settings.name)).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        before(
            deadline,
            self.api
                .replace(&self.settings.name, &PostParams::default(), &lease),
        )
        .await
        .map(|_| ())
    }

    /// Waits until this replica leads and returns when the winning attempt
    /// started (the renewal [`Self::keep`] counts from); `None` if
    /// `shutdown` fired first.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> Option<Instant> {
        loop {
            let started = Instant::now();
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return None,
                attempt = self.try_acquire_or_renew_until(started + self.settings.renew_deadline) => attempt,
            };
            match attempt {
                Ok(Attempt::Leading) => {
                    info!(lease = %self.settings.name, identity = %self.settings.identity, "acquired leadership");
                    return Some(started);
                }
                Ok(Attempt::Following) => {}
                Err(error) => warn!(%error, "could not read or take the leader lease"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(self.settings.retry_period) => {}
            }
        }
    }

    /// Renews the lease until `shutdown` fires (returns normally) or the
    /// lease is lost (cancels `lost` and returns).
    ///
    /// `renewed_at` is when the attempt that acquired the lease started.
    pub async fn keep(
        &self,
        shutdown: &CancellationToken,
        lost: &CancellationToken,
        renewed_at: Instant,
    ) {
        let mut last_renewal = renewed_at;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.settings.retry_period) => {}
            }
            let started = Instant::now();
            let deadline = last_renewal + self.settings.renew_deadline;
            match self.try_acquire_or_renew_until(deadline).await {
                Ok(Attempt::Leading) => last_renewal = started,
                Ok(Attempt::Following) => {
                    warn!(lease = %self.settings.name, "another replica holds the leader lease; stopping");
                    lost.cancel();
                    return;
                }
                Err(error) if Instant::now() >= deadline => {
                    warn!(%error, "could not renew the leader lease before the deadline; stopping");
                    lost.cancel();
                    return;
                }
                Err(error) => warn!(%error, "could not renew the leader lease; retrying"),
            }
        }
    }
}

/// Runs one lease request, abandoning it at `deadline`.
async fn before<T>(
    deadline: Instant,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaseError> {
    match tokio::time::timeout_at(deadline, request).await {
        Ok(result) => result.map_err(LeaseError::from),
        Err(_elapsed) => Err(LeaseError::DeadlineExceeded),
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(MicroTime(renewed)) = spec.renew_time else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match renewed.checked_add(duration) {
        Ok(valid_until) => valid_until < now,
        Err(_) => false,
    }
}
