//! `envtest` for Bulkhead: a real Kubernetes control plane on loopback for
//! the test suite, in the spirit of controller-runtime's envtest but with
//! the real authorizer and controller manager too.
//!
//! etcd, kube-apiserver and kube-controller-manager are built from source
//! at pinned releases by `tests/envtest/build.sh` and found through
//! [`binaries::BIN_DIR_ENV`]. Each test binary starts one control plane on
//! first use ([`ControlPlane::shared`]) and shares it between its tests;
//! [`ControlPlane::install_bulkhead`] applies `manifests/` with kubectl and
//! runs the real `bulkhead-operator` binary as its ServiceAccount. With
//! [`Options::with_pods`] ([`ControlPlane::shared_with`]) kube-scheduler and
//! kwok run too, so pods are scheduled and become Running and Ready on fake
//! nodes without a kubelet ([`nodes`]). No process outlives the test binary,
//! however it ends ([`process`]).
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use bulkhead_envtest::ControlPlane;
//! let cp = ControlPlane::shared();
//! let installation = cp.install_bulkhead();
//! let admin = cp.admin_client().await?;
//! let mark = cp.audit().mark()?;
//! // ... act, then read what the operator did:
//! let writes: Vec<_> = cp
//!     .audit()
//!     .since(mark)?
//!     .into_iter()
//!     .filter(|e| e.username() == bulkhead_envtest::OPERATOR_USER && e.is_write())
//!     .collect();
//! # let _ = (installation, admin, writes);
//! # Ok(())
//! # }
//! ```

pub mod audit;
pub mod binaries;
pub mod control_plane;
pub mod install;
pub mod kstatus;
pub mod netpol;
pub mod nodes;
pub mod pki;
pub mod process;
pub mod server;
pub mod tenants;

pub use audit::{AuditEvent, AuditLog, AuditMark};
pub use control_plane::{ControlPlane, Options, ServiceAccountClient};
pub use install::{
    Installation, OPERATOR_GROUPS, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, OPERATOR_USER,
    Operator, OperatorOptions,
};
pub use nodes::FakeNode;
