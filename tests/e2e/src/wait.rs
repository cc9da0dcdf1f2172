//! Polling waits with a deadline and a description of the last state seen,
//! so a timed-out test says what it was waiting for and what it saw.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::{Api, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::harness::delete_ignoring_absent;

/// How often a wait looks again.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Time for a new Tenant to become Ready (namespace, RBAC, image start, probes).
pub const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// Time for the operator to notice and repair a change.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(90);
/// Time for a namespace to finish terminating.
pub const NAMESPACE_DELETION_TIMEOUT: Duration = Duration::from_secs(240);

/// Result of one look at the cluster.
pub enum Check<T> {
    /// The awaited state was reached.
    Done(T),
    /// Not yet; the text describes what was seen instead.
    Pending(String),
}

/// Calls `check` every [`POLL_INTERVAL`] until it reports [`Check::Done`],
/// returns its first error, or fails after `timeout` naming `what` and the
/// last state seen.
pub async fn until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<Check<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match check().await? {
            Check::Done(value) => return Ok(value),
            Check::Pending(seen) => seen,
        };
        if Instant::now() >= deadline {
            bail!(
                "timed out after {}s waiting for {what}; last seen: {seen}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Deletes `name` and waits until an object of that name exists again
/// with a different uid: the operator put it back.
pub async fn deleted_and_restored<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let before = api
        .get(name)
        .await
        .with_context(|| format!("reading {name} before deleting it"))?;
    let old_uid = before.uid();
    delete_ignoring_absent(api, name).await?;
    until(
        &format!("{name} to be recreated by the operator"),
        RECONCILE_TIMEOUT,
        async || {
            Ok(match api.get_opt(name).await? {
                Some(object)
                    if object.uid() != old_uid && object.meta().deletion_timestamp.is_none() =>
                {
                    Check::Done(())
                }
                Some(_) => Check::Pending("the deleted object is still there".to_owned()),
                None => Check::Pending("absent".to_owned()),
            })
        },
    )
    .await
}
