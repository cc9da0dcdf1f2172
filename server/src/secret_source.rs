//! Reading a set of secret values (API-key hashes or upstream credentials)
//! from where the configuration says they live, and keeping them current.
//!
//! - `kubernetesSecret`: `get` of the one named Secret, then a `watch` with a
//!   `metadata.name` field selector. The pod's RBAC grants exactly `get` and
//!   `watch` on that name, not `list`, which is why this does not use
//!   kube-runtime's watcher (it lists).
//! - `file`: a YAML map of key to value, re-read every poll interval.
//! - `directory`: one file per key (a mounted Secret), re-read every poll
//!   interval. Kubernetes' `..data` bookkeeping entries are skipped.
//!
//! A local source may be read while it is being rewritten in place
//! (truncated, then written). So a change is taken only once two reads
//! [`SETTLE`] apart agree, in content and in the file's modification time
//! and size (so a writer that rewrites the file between them, even with the
//! same half-written text, is noticed); a file with no YAML document at all (empty,
//! whitespace or only comments) or one that does not parse keeps the last
//! good values and says so in the log; an explicit empty map (`{}`) means
//! "no entries", and a deleted file or directory means no entries as well.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_crds::server_config::SecretSource;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, WatchEvent, WatchParams};
use secrecy::SecretString;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The values of one secret source, by key.
pub type SecretData = BTreeMap<String, SecretString>;

/// How long a changed local source must read the same before the change is
/// taken: long enough for a rewrite in place to finish, short enough that
/// removing an entry still takes effect within a poll.
pub const SETTLE: Duration = Duration::from_millis(200);
/// Reads of one poll while a local source keeps changing; after that the
/// last good values stay until the next poll.
const MAX_SETTLE_READS: usize = 5;

/// When and how large a local file was when read: `None` for a directory
/// (a mounted Secret is swapped atomically, by symlink).
type FileStamp = Option<(std::time::SystemTime, u64)>;

/// One read of a local file or directory source.
enum LocalRead {
    /// Entries (possibly none, written as `{}`).
    Entries(SecretData, FileStamp),
    /// A file without any YAML document: empty, whitespace or comments only.
    Blank(FileStamp),
    /// The file was written to while it was read.
    Changing,
    /// The file or directory does not exist.
    Missing,
    /// The source cannot be read or parsed.
    Unreadable(SecretSourceError),
}

impl LocalRead {
    /// Whether two reads saw the same thing.
    fn same_as(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Entries(a, stamp_a), Self::Entries(b, stamp_b)) => {
                stamp_a == stamp_b && same_values(a, b)
            }
            (Self::Blank(a), Self::Blank(b)) => a == b,
            (Self::Missing, Self::Missing) => true,
            _ => false,
        }
    }
}

/// Why a secret source could not be read. Never carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SecretSourceError {
    /// A local file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A local file is not a YAML map of strings.
    #[error("{path} is not a YAML map of string keys to string values: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (positions only, it never quotes values).
        message: String,
    },
    /// A Secret value is not UTF-8.
    #[error("key {key:?} of {location} is not UTF-8 text")]
    NotUtf8 {
        /// Where the value was read from.
        location: String,
        /// The key whose value is not text.
        key: String,
    },
    /// The Kubernetes API refused or failed the request.
    #[error("cannot read Secret {namespace}/{name}: {source}")]
    Kubernetes {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The client error (boxed: it is large, and errors are rare).
        source: Box<kube::Error>,
    },
    /// A followed source has not been read successfully yet (the API server
    /// refused or has not answered the first `get`).
    #[error("{location} has not been read yet")]
    NotYetRead {
        /// The source, e.g. `Secret bulkhead-acme/bulkhead-credentials`.
        location: String,
    },
    /// No Kubernetes client could be built (not in a cluster, no kubeconfig).
    #[error("no Kubernetes client available for Secret {namespace}/{name}: {message}")]
    NoClient {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// Why the client could not be built.
        message: String,
    },
}

/// A configured secret source, with relative paths already resolved.
#[derive(Clone)]
pub struct SecretLocation {
    source: SecretSource,
    client: Option<kube::Client>,
}

impl std::fmt::Debug for SecretLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretLocation")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl SecretLocation {
    /// A location; `client` is required for `kubernetesSecret` sources.
    pub fn new(source: SecretSource, client: Option<kube::Client>) -> Self {
        Self { source, client }
    }

    /// The configured source.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// Reads every value once.
    pub async fn load(&self) -> Result<SecretData, SecretSourceError> {
        match &self.source {
            SecretSource::File { path } => read_yaml_map(Path::new(path)).await,
            SecretSource::Directory { path } => read_directory(Path::new(path)).await,
            SecretSource::KubernetesSecret { namespace, name } => {
                let api = self.secret_api(namespace, name)?;
                let secret =
                    api.get(name)
                        .await
                        .map_err(|source| SecretSourceError::Kubernetes {
                            namespace: namespace.clone(),
                            name: name.clone(),
                            source: Box::new(source),
                        })?;
                Ok(secret_data(namespace, name, &secret))
            }
        }
    }

    /// Reads one value; `Ok(None)` if the key is absent.
    pub async fn load_key(&self, key: &str) -> Result<Option<SecretString>, SecretSourceError> {
        match &self.source {
            SecretSource::Directory { path } => {
                if !is_plain_file_name(key) {
                    return Ok(None);
                }
                let file = Path::new(path).join(key);
                match tokio::fs::read(&file).await {
                    Ok(bytes) => text(bytes, &file.display().to_string(), key).map(Some),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(SecretSourceError::Read { path: file, source }),
                }
            }
            _ => Ok(self.load().await?.remove(key)),
        }
    }

    fn secret_api(&self, namespace: &str, name: &str) -> Result<Api<Secret>, SecretSourceError> {
        let client = self
            .client
            .clone()
            .ok_or_else(|| SecretSourceError::NoClient {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                message: "the server was started without a Kubernetes client".to_owned(),
            })?;
        Ok(Api::namespaced(client, namespace))
    }

    /// Keeps a snapshot of the source current until `shutdown` fires. The
    /// receiver holds `None` until the first successful read.
    pub fn watch(
        self,
        poll_interval: Duration,
        shutdown: CancellationToken,
    ) -> watch::Receiver<Option<Arc<SecretData>>> {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.keep_current(tx, poll_interval) => {}
            }
        });
        rx
    }

    async fn keep_current(
        &self,
        tx: watch::Sender<Option<Arc<SecretData>>>,
        poll_interval: Duration,
    ) {
        match &self.source {
            SecretSource::KubernetesSecret { namespace, name } => {
                self.follow_kubernetes_secret(namespace, name, &tx, poll_interval)
                    .await;
            }
            SecretSource::File { .. } | SecretSource::Directory { .. } => {
                let mut interval = tokio::time::interval(poll_interval);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    interval.tick().await;
                    self.poll_local(&tx).await;
                }
            }
        }
    }

    /// Reads a local source once, telling a blank or missing file apart.
    async fn read_local(&self) -> LocalRead {
        let (result, stamp) = match &self.source {
            SecretSource::File { path } => {
                let path = Path::new(path);
                let before = file_stamp(path).await;
                let result = read_yaml_document(path).await;
                let after = file_stamp(path).await;
                if before != after {
                    return LocalRead::Changing;
                }
                (result, after)
            }
            _ => (self.load().await.map(Some), None),
        };
        match result {
            Ok(Some(data)) => LocalRead::Entries(data, stamp),
            Ok(None) => LocalRead::Blank(stamp),
            Err(SecretSourceError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                LocalRead::Missing
            }
            Err(error) => LocalRead::Unreadable(error),
        }
    }

    /// One poll of a local source: a change is published once two reads
    /// [`SETTLE`] apart agree, so a file caught half-way through a rewrite
    /// in place is never taken for the new set.
    async fn poll_local(&self, tx: &watch::Sender<Option<Arc<SecretData>>>) {
        let mut read = self.read_local().await;
        for _ in 0..MAX_SETTLE_READS {
            let has_values = tx.borrow().is_some();
            match &read {
                // A blank file is what a rewrite in place looks like before
                // the new text arrives: keep the last good values. Only at
                // start-up, with nothing to keep, does it mean no entries.
                LocalRead::Blank(_) if has_values => {
                    tracing::warn!(
                        "secret source is an empty file; keeping the last good values (write `{{}}` for no entries)"
                    );
                    return;
                }
                // A half-written or mistyped file keeps the last good values,
                // so a typo does not lock every caller out.
                LocalRead::Unreadable(error) => {
                    tracing::error!(%error, "secret source unreadable; keeping the last good values");
                    return;
                }
                LocalRead::Entries(data, _) if is_current(tx, data) => return,
                LocalRead::Missing if is_current(tx, &SecretData::new()) => return,
                _ => {}
            }
            tokio::time::sleep(SETTLE).await;
            let again = self.read_local().await;
            if !again.same_as(&read) {
                read = again;
                continue;
            }
            match again {
                LocalRead::Entries(data, _) => publish(tx, data),
                // A deleted file or directory is an empty source: removing
                // the key file must revoke every key, not freeze them.
                LocalRead::Missing => {
                    tracing::warn!("secret source is gone; treating it as empty");
                    publish(tx, SecretData::new());
                }
                LocalRead::Blank(_) => publish(tx, SecretData::new()),
                LocalRead::Changing | LocalRead::Unreadable(_) => {}
            }
            return;
        }
        tracing::warn!(
            "secret source kept changing while read; keeping the last good values until the next poll"
        );
    }

    /// `get`, then `watch` from its resourceVersion; on any watch end or
    /// error, wait a moment and `get` again (a `410 Gone` needs that too).
    async fn follow_kubernetes_secret(
        &self,
        namespace: &str,
        name: &str,
        tx: &watch::Sender<Option<Arc<SecretData>>>,
        retry_after: Duration,
    ) {
        let api = match self.secret_api(namespace, name) {
            Ok(api) => api,
            Err(error) => {
                tracing::error!(%error, "cannot follow the Secret");
                return;
            }
        };
        let params = WatchParams::default().fields(&format!("metadata.name={name}"));
        loop {
            let version = match api.get(name).await {
                Ok(secret) => {
                    publish(tx, secret_data(namespace, name, &secret));
                    secret.metadata.resource_version.unwrap_or_default()
                }
                Err(error) => {
                    tracing::warn!(%error, namespace, name, "cannot get the Secret; retrying");
                    tokio::time::sleep(retry_after).await;
                    continue;
                }
            };
            match api.watch(&params, &version).await {
                Ok(stream) => {
                    let mut stream = std::pin::pin!(stream);
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(WatchEvent::Added(secret) | WatchEvent::Modified(secret)) => {
                                publish(tx, secret_data(namespace, name, &secret));
                            }
                            Ok(WatchEvent::Deleted(_)) => publish(tx, SecretData::new()),
                            Ok(WatchEvent::Bookmark(_)) => {}
                            Ok(WatchEvent::Error(status)) => {
                                tracing::debug!(
                                    code = status.code,
                                    "watch ended; reading the Secret again"
                                );
                                break;
                            }
                            Err(error) => {
                                tracing::warn!(%error, "watch failed; reading the Secret again");
                                break;
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, namespace, name, "cannot watch the Secret; retrying");
                }
            }
            tokio::time::sleep(retry_after).await;
        }
    }
}

/// Modification time and size of a file, if it can be read.
async fn file_stamp(path: &Path) -> FileStamp {
    let metadata = tokio::fs::metadata(path).await.ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Whether `data` is what the source already holds.
fn is_current(tx: &watch::Sender<Option<Arc<SecretData>>>, data: &SecretData) -> bool {
    tx.borrow()
        .as_deref()
        .is_some_and(|current| same_values(current, data))
}

fn publish(tx: &watch::Sender<Option<Arc<SecretData>>>, data: SecretData) {
    tx.send_if_modified(|current| {
        let changed = current
            .as_deref()
            .is_none_or(|old| !same_values(old, &data));
        if changed {
            *current = Some(Arc::new(data));
        }
        changed
    });
}

fn same_values(a: &SecretData, b: &SecretData) -> bool {
    use secrecy::ExposeSecret;
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && va.expose_secret() == vb.expose_secret())
}

fn secret_data(namespace: &str, name: &str, secret: &Secret) -> SecretData {
    let location = format!("Secret {namespace}/{name}");
    let mut data = SecretData::new();
    for (key, value) in secret.data.iter().flatten() {
        insert_text(&mut data, key, value.0.clone(), &location);
    }
    for (key, value) in secret.string_data.iter().flatten() {
        data.insert(key.clone(), SecretString::from(value.as_str()));
    }
    data
}

/// Adds one value; a value that is not text is left out (and logged by key,
/// never by value) rather than failing the whole source, so one bad entry
/// can neither hide the others nor hold back an update that revokes a key.
fn insert_text(data: &mut SecretData, key: &str, bytes: Vec<u8>, location: &str) {
    match text(bytes, location, key) {
        Ok(value) => {
            data.insert(key.to_owned(), value);
        }
        Err(error) => tracing::warn!(%error, "leaving the value out"),
    }
}

fn text(bytes: Vec<u8>, location: &str, key: &str) -> Result<SecretString, SecretSourceError> {
    let value = String::from_utf8(bytes).map_err(|_| SecretSourceError::NotUtf8 {
        location: location.to_owned(),
        key: key.to_owned(),
    })?;
    // Mounted and hand-written files commonly end in a newline that is not
    // part of the value.
    Ok(SecretString::from(value.trim_end_matches(['\n', '\r'])))
}

async fn read_yaml_map(path: &Path) -> Result<SecretData, SecretSourceError> {
    Ok(read_yaml_document(path).await?.unwrap_or_default())
}

/// The YAML map in `path`, or `None` when the file holds no YAML document
/// (empty, whitespace or only comments).
async fn read_yaml_document(path: &Path) -> Result<Option<SecretData>, SecretSourceError> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| SecretSourceError::Read {
            path: path.to_owned(),
            source,
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let map: Option<BTreeMap<String, String>> =
        yaml_serde::from_slice(&bytes).map_err(|e| SecretSourceError::Parse {
            path: path.to_owned(),
            message: e.location().map_or_else(
                || "unexpected structure".to_owned(),
                |l| format!("line {} column {}", l.line(), l.column()),
            ),
        })?;
    Ok(map.map(|map| {
        map.into_iter()
            .map(|(k, v)| (k, SecretString::from(v)))
            .collect()
    }))
}

async fn read_directory(path: &Path) -> Result<SecretData, SecretSourceError> {
    let read_error = |source| SecretSourceError::Read {
        path: path.to_owned(),
        source,
    };
    let mut entries = tokio::fs::read_dir(path).await.map_err(read_error)?;
    let mut data = SecretData::new();
    while let Some(entry) = entries.next_entry().await.map_err(read_error)? {
        let Some(key) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_plain_file_name(&key) {
            continue;
        }
        let file = entry.path();
        // Follows symlinks, as a mounted Secret's entries are symlinks.
        if !tokio::fs::metadata(&file).await.is_ok_and(|m| m.is_file()) {
            continue;
        }
        let bytes = tokio::fs::read(&file)
            .await
            .map_err(|source| SecretSourceError::Read {
                path: file.clone(),
                source,
            })?;
        insert_text(&mut data, &key, bytes, &file.display().to_string());
    }
    Ok(data)
}

/// Keys that may name a file: no path separators, no hidden or `..data`
/// bookkeeping entries of a mounted Secret.
fn is_plain_file_name(key: &str) -> bool {
    !key.is_empty() && !key.starts_with('.') && !key.contains(['/', '\\'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "bulkhead-secret-source-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn file_source_reads_a_yaml_map() {
        let dir = scratch_dir("file");
        let file = dir.join("creds.yaml");
        std::fs::write(&file, "github_token: ghp_one\nother: \"two\"\n").unwrap();
        let location = SecretLocation::new(
            SecretSource::File {
                path: file.display().to_string(),
            },
            None,
        );
        let data = location.load().await.unwrap();
        assert_eq!(data["github_token"].expose_secret(), "ghp_one");
        assert_eq!(data["other"].expose_secret(), "two");
        assert!(location.load_key("missing").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn parse_errors_do_not_quote_the_file() {
        let dir = scratch_dir("parse");
        let file = dir.join("creds.yaml");
        std::fs::write(&file, "- ghp_secretvalue\n").unwrap();
        let location = SecretLocation::new(
            SecretSource::File {
                path: file.display().to_string(),
            },
            None,
        );
        let error = location.load().await.unwrap_err().to_string();
        assert!(!error.contains("ghp_secretvalue"), "{error}");
    }

    #[tokio::test]
    async fn directory_source_skips_bookkeeping_entries_and_trims_newlines() {
        let dir = scratch_dir("dir");
        std::fs::write(dir.join("token"), "value\n").unwrap();
        std::fs::create_dir_all(dir.join("..data")).unwrap();
        std::fs::write(dir.join(".hidden"), "x").unwrap();
        let location = SecretLocation::new(
            SecretSource::Directory {
                path: dir.display().to_string(),
            },
            None,
        );
        let data = location.load().await.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), vec!["token"]);
        assert_eq!(data["token"].expose_secret(), "value");
        assert!(location.load_key("../token").await.unwrap().is_none());
    }

    fn secret(value: &str) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.name = Some("bulkhead-api-keys".into());
        secret.metadata.namespace = Some("bulkhead-acme".into());
        secret.data = Some(BTreeMap::from([(
            "alice".to_owned(),
            k8s_openapi::ByteString(value.as_bytes().to_vec()),
        )]));
        secret
    }

    #[tokio::test]
    async fn kubernetes_source_reads_and_follows_the_named_secret() {
        let client = kube_fake_client::ClientBuilder::new()
            .with_object(secret("v1\n"))
            .build()
            .await
            .unwrap();
        let location = SecretLocation::new(
            SecretSource::KubernetesSecret {
                namespace: "bulkhead-acme".into(),
                name: "bulkhead-api-keys".into(),
            },
            Some(client.clone()),
        );
        let data = location.load().await.unwrap();
        assert_eq!(data["alice"].expose_secret(), "v1");

        let shutdown = CancellationToken::new();
        let mut rx = location.watch(Duration::from_millis(50), shutdown.clone());
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some))
            .await
            .unwrap()
            .unwrap();
        // A changed Secret is picked up (by the watch, or by the re-read
        // that follows a watch the API cannot serve).
        let api: Api<Secret> = Api::namespaced(client, "bulkhead-acme");
        let mut changed = api.get("bulkhead-api-keys").await.unwrap();
        changed.data = secret("v2").data;
        api.replace("bulkhead-api-keys", &Default::default(), &changed)
            .await
            .unwrap();
        let updated = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|d| {
                d.as_ref()
                    .is_some_and(|d| d["alice"].expose_secret() == "v2")
            }),
        )
        .await;
        assert!(updated.is_ok(), "the rotated Secret was not picked up");
        shutdown.cancel();
    }

    #[test]
    fn one_value_that_is_not_text_leaves_the_others_readable() {
        let mut bad = secret("sha256:aa");
        bad.data.get_or_insert_default().insert(
            "binary".to_owned(),
            k8s_openapi::ByteString(vec![0xff, 0xfe]),
        );
        let data = secret_data("bulkhead-acme", "bulkhead-api-keys", &bad);
        assert_eq!(data.keys().collect::<Vec<_>>(), vec!["alice"]);
    }

    #[tokio::test]
    async fn a_deleted_file_source_becomes_empty() {
        let dir = scratch_dir("deleted");
        let file = dir.join("keys.yaml");
        std::fs::write(&file, "alice: sha256:aa\n").unwrap();
        let location = SecretLocation::new(
            SecretSource::File {
                path: file.display().to_string(),
            },
            None,
        );
        let shutdown = CancellationToken::new();
        let mut rx = location.watch(Duration::from_millis(20), shutdown.clone());
        tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|d| d.as_ref().is_some_and(|d| d.contains_key("alice"))),
        )
        .await
        .unwrap()
        .unwrap();
        std::fs::remove_file(&file).unwrap();
        let emptied = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|d| d.as_ref().is_some_and(|d| d.is_empty())),
        )
        .await;
        assert!(emptied.is_ok(), "keys of a deleted file stayed valid");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn kubernetes_source_without_client_is_a_clear_error() {
        let location = SecretLocation::new(
            SecretSource::KubernetesSecret {
                namespace: "bulkhead-acme".into(),
                name: "bulkhead-api-keys".into(),
            },
            None,
        );
        let error = location.load().await.unwrap_err().to_string();
        assert!(error.contains("bulkhead-acme/bulkhead-api-keys"), "{error}");
    }
}
