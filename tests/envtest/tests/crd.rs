//! The Tenant CRD on the real API server: a structural schema whose CEL
//! rules fit the API server's cost budget, served with its descriptions.

use anyhow::{Context, Result};
use bulkhead_envtest::ControlPlane;
use bulkhead_envtest::binaries::operator_binary;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::Api;

/// How long the API server may take to publish the Tenant's OpenAPI after
/// the CRD is Established (seconds on a loaded machine).
const OPENAPI_PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn the_generated_crd_is_accepted_established_and_explained() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.apply_manifests()?;
    let admin = cp.admin_client().await?;

    // What `bulkhead-operator crd` prints is what the API server accepts:
    // create it again under a dry run, which runs the structural-schema and
    // CEL cost checks of a create without storing anything.
    let output = std::process::Command::new(operator_binary()?)
        .arg("crd")
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated: CustomResourceDefinition = yaml_serde::from_slice(&output.stdout)?;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let replaced = crds
        .replace(
            "tenants.bulkhead.dev",
            &kube::api::PostParams {
                dry_run: true,
                ..Default::default()
            },
            &{
                let mut current = crds.get("tenants.bulkhead.dev").await?;
                current.spec = generated.spec.clone();
                current
            },
        )
        .await
        .context("the API server refused the generated CRD")?;
    assert_eq!(replaced.spec.names.kind, "Tenant");

    let stored = crds.get("tenants.bulkhead.dev").await?;
    let conditions = stored
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    assert_eq!(
        condition("Established").map(|c| c.0).as_deref(),
        Some("True"),
        "{conditions:?}"
    );
    assert_eq!(
        condition("NamesAccepted").map(|c| c.0).as_deref(),
        Some("True"),
        "{conditions:?}"
    );
    assert!(
        condition("NonStructuralSchema").is_none_or(|c| c.0 != "True"),
        "{conditions:?}"
    );
    // The stored schema is the generated one, not a pruned or defaulted variant.
    assert_eq!(
        serde_json::to_value(&stored.spec.versions)?,
        serde_json::to_value(&generated.spec.versions)?
    );

    // `kubectl explain` reads the published OpenAPI: every description of
    // spec.network and its fields is there.
    let schema = generated.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .context("no schema")?;
    let property = |schema: &JSONSchemaProps, name: &str| -> Result<JSONSchemaProps> {
        schema
            .properties
            .as_ref()
            .and_then(|p| p.get(name))
            .cloned()
            .with_context(|| format!("no property {name}"))
    };
    let network = property(&property(schema, "spec")?, "network")?;
    // The API server publishes a CRD's OpenAPI some time after it is
    // Established (its OpenAPI controller rebuilds the spec
    // asynchronously), so `explain` may not find the resource at first.
    let started = std::time::Instant::now();
    let explained = loop {
        match cp.kubectl_ok(&["explain", "tenant.spec.network"]) {
            Ok(text) => break squash(&text),
            Err(e) if started.elapsed() < OPENAPI_PUBLISH_TIMEOUT => {
                eprintln!("envtest: kubectl explain not ready yet: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.context("the Tenant's OpenAPI was not published in time")),
        }
    };
    let mut expected = vec![
        network
            .description
            .clone()
            .context("network has no description")?,
    ];
    for (name, field) in network.properties.clone().unwrap_or_default() {
        assert!(
            explained.contains(&format!("{name} <")),
            "field {name} missing:\n{explained}"
        );
        expected.push(
            field
                .description
                .with_context(|| format!("{name} has no description"))?,
        );
    }
    for description in expected {
        assert!(
            explained.contains(&squash(&description)),
            "`kubectl explain tenant.spec.network` lacks {description:?}:\n{explained}"
        );
    }
    // The short name works too.
    let short = squash(&cp.kubectl_ok(&["explain", "tnt.spec.network.egress"])?);
    assert!(short.contains("Upstream destinations"), "{short}");
    Ok(())
}
