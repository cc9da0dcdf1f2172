//! Where the control-plane binaries and Bulkhead's own binaries are.
//!
//! The control plane comes from `tests/envtest/build.sh`, which prints the
//! directory; `tests/envtest/run.sh` exports it as [`BIN_DIR_ENV`]. A
//! missing directory or binary is an error, never a reason to skip.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Environment variable naming the directory with `etcd`, `kube-apiserver`,
/// `kube-controller-manager`, `kube-scheduler`, `kubectl` and `kwok`.
pub const BIN_DIR_ENV: &str = "BULKHEAD_ENVTEST_BIN";
/// Environment variable naming the `bulkhead-operator` binary; by default
/// the one cargo built beside this test binary (`target/<profile>/`).
pub const OPERATOR_BIN_ENV: &str = "BULKHEAD_OPERATOR_BIN";
/// Environment variable naming the `bulkhead-server` binary; by default
/// the one cargo built beside this test binary.
pub const SERVER_BIN_ENV: &str = "BULKHEAD_SERVER_BIN";

/// Paths of the control-plane binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// The directory they are in.
    pub dir: PathBuf,
}

impl Binaries {
    /// The directory named by [`BIN_DIR_ENV`], checked to hold every binary.
    pub fn from_env() -> Result<Self> {
        let dir = std::env::var_os(BIN_DIR_ENV).with_context(|| {
            format!(
                "{BIN_DIR_ENV} is not set: run the envtest suite with tests/envtest/run.sh, \
                 or export {BIN_DIR_ENV}=\"$(bash tests/envtest/build.sh | tail -1)\""
            )
        })?;
        let binaries = Self {
            dir: PathBuf::from(dir),
        };
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubectl",
            "kwok",
        ] {
            executable(&binaries.dir.join(name))?;
        }
        Ok(binaries)
    }

    /// `etcd`.
    pub fn etcd(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    /// `kube-apiserver`.
    pub fn kube_apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }

    /// `kube-controller-manager`.
    pub fn kube_controller_manager(&self) -> PathBuf {
        self.dir.join("kube-controller-manager")
    }

    /// `kube-scheduler`.
    pub fn kube_scheduler(&self) -> PathBuf {
        self.dir.join("kube-scheduler")
    }

    /// `kubectl`.
    pub fn kubectl(&self) -> PathBuf {
        self.dir.join("kubectl")
    }

    /// `kwok`.
    pub fn kwok(&self) -> PathBuf {
        self.dir.join("kwok")
    }
}

/// The `bulkhead-operator` binary ([`OPERATOR_BIN_ENV`] or cargo's).
pub fn operator_binary() -> Result<PathBuf> {
    workspace_binary(OPERATOR_BIN_ENV, "bulkhead-operator", "bulkhead-operator")
}

/// The `bulkhead-server` binary ([`SERVER_BIN_ENV`] or cargo's).
pub fn server_binary() -> Result<PathBuf> {
    workspace_binary(SERVER_BIN_ENV, "bulkhead-server", "bulkhead-server")
}

fn workspace_binary(env: &str, name: &str, package: &str) -> Result<PathBuf> {
    let path = match std::env::var_os(env) {
        Some(path) => PathBuf::from(path),
        None => {
            // Test binaries live in target/<profile>/deps/, binaries
            // (also bulkhead-envtest) in target/<profile>/.
            let exe = std::env::current_exe().context("locate the running binary")?;
            let mut dir = exe
                .parent()
                .with_context(|| format!("no directory above {}", exe.display()))?;
            if dir.ends_with("deps") {
                dir = dir
                    .parent()
                    .with_context(|| format!("no target directory above {}", exe.display()))?;
            }
            dir.join(name)
        }
    };
    executable(&path).with_context(|| {
        format!(
            "build it first: cargo build -p {package} (or set {env}); tests/envtest/run.sh does"
        )
    })?;
    Ok(path)
}

fn executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata =
        std::fs::metadata(path).with_context(|| format!("{} is missing", path.display()))?;
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        bail!("{} is not an executable file", path.display());
    }
    Ok(())
}

/// The repository root (for `manifests/`).
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
