//! The control plane's own public key infrastructure, generated at start:
//! a CA, the API server's serving certificate for loopback, client
//! certificates for the admin and the controller manager, and the
//! ServiceAccount token signing key.
//!
//! Kubernetes authenticates a client certificate's subject as user = CN and
//! groups = O (<https://kubernetes.io/docs/reference/access-authn-authz/authentication/#x509-client-certificates>),
//! so the admin certificate carries `O=system:masters` and the controller
//! manager's `CN=system:kube-controller-manager`, the user its default
//! ClusterRoleBinding names.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key, PEM encoded, and where they were written.
#[derive(Clone, Debug)]
pub struct KeyedCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// File holding `cert_pem`.
    pub cert_file: PathBuf,
    /// File holding `key_pem`.
    pub key_file: PathBuf,
}

/// Every certificate and key the control plane uses, written under one directory.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The CA certificate, PEM; it signed every other certificate.
    pub ca_pem: String,
    /// File holding `ca_pem` (the API server's `--client-ca-file`).
    pub ca_file: PathBuf,
    /// The CA's private key file (unused by the components, kept for tools).
    pub ca_key_file: PathBuf,
    /// kube-apiserver's serving certificate.
    pub serving: KeyedCertificate,
    /// Admin client certificate: user `bulkhead-envtest-admin`, group `system:masters`.
    pub admin: KeyedCertificate,
    /// kube-controller-manager's client certificate: user `system:kube-controller-manager`.
    pub controller_manager: KeyedCertificate,
    /// ServiceAccount token signing key (private, PKCS#8 PEM file).
    pub service_account_key_file: PathBuf,
    /// Its public key (PEM file), which the API server verifies tokens with.
    pub service_account_pub_file: PathBuf,
}

/// User name of the admin client certificate.
pub const ADMIN_USER: &str = "bulkhead-envtest-admin";

impl Pki {
    /// Generates the CA and every certificate, and writes them into `dir`.
    ///
    /// `serving_names` are the serving certificate's subject alternative
    /// names (DNS names and IP addresses).
    pub fn generate(dir: &Path, serving_names: &[String]) -> Result<Self> {
        let ca_key = KeyPair::generate().context("generate the CA key")?;
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "bulkhead-envtest-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("self-sign the CA")?;
        let ca_pem = ca.pem();
        let ca_file = write(dir, "ca.crt", &ca_pem)?;
        let ca_key_file = write(dir, "ca.key", &ca_key_pem)?;

        let leaf = |name: &str,
                    common_name: &str,
                    organization: Option<&str>,
                    sans: &[String],
                    usage: ExtendedKeyUsagePurpose|
         -> Result<KeyedCertificate> {
            let key = KeyPair::generate().with_context(|| format!("generate the {name} key"))?;
            let mut params = CertificateParams::new(sans.to_vec())
                .with_context(|| format!("subject alternative names of {name}"))?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            if let Some(organization) = organization {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, organization);
            }
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let cert = params
                .signed_by(&key, &ca)
                .with_context(|| format!("sign the {name} certificate"))?;
            let cert_pem = cert.pem();
            let key_pem = key.serialize_pem();
            Ok(KeyedCertificate {
                cert_file: write(dir, &format!("{name}.crt"), &cert_pem)?,
                key_file: write(dir, &format!("{name}.key"), &key_pem)?,
                cert_pem,
                key_pem,
            })
        };
        let serving = leaf(
            "kube-apiserver",
            "kube-apiserver",
            None,
            serving_names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let admin = leaf(
            "admin",
            ADMIN_USER,
            Some("system:masters"),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let controller_manager = leaf(
            "kube-controller-manager",
            "system:kube-controller-manager",
            None,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        let service_account =
            KeyPair::generate().context("generate the ServiceAccount signing key")?;
        let service_account_key_file =
            write(dir, "service-account.key", &service_account.serialize_pem())?;
        let service_account_pub_file = write(
            dir,
            "service-account.pub",
            &service_account.public_key_pem(),
        )?;

        Ok(Self {
            ca_pem,
            ca_file,
            ca_key_file,
            serving,
            admin,
            controller_manager,
            service_account_key_file,
            service_account_pub_file,
        })
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}
