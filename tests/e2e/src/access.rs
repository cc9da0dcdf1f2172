//! RBAC checks through SubjectAccessReview: the API server's own answer to
//! "may this identity do this", without needing that identity's token.

use anyhow::{Context, Result};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

use crate::harness::TestEnv;

/// An identity as the API server sees it after authentication.
#[derive(Clone, Debug)]
pub struct Subject {
    user: String,
    groups: Vec<String>,
}

impl Subject {
    /// A ServiceAccount, with the groups every ServiceAccount token carries.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
        }
    }
}

/// A request on Secrets: a verb, optionally a namespace (none means
/// cluster-wide) and optionally one Secret's name.
#[derive(Clone, Copy, Debug)]
pub struct SecretRequest<'a> {
    /// `get`, `list` or `watch`.
    pub verb: &'a str,
    /// Namespace, or `None` for all namespaces.
    pub namespace: Option<&'a str>,
    /// One Secret, or `None` for any.
    pub name: Option<&'a str>,
}

impl TestEnv {
    /// Whether `subject` may perform `request`, as the API server's
    /// authorizers decide it.
    pub async fn may(&self, subject: &Subject, request: SecretRequest<'_>) -> Result<bool> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(subject.user.clone()),
                groups: Some(subject.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(String::new()),
                    version: Some("v1".to_owned()),
                    resource: Some("secrets".to_owned()),
                    verb: Some(request.verb.to_owned()),
                    namespace: request.namespace.map(str::to_owned),
                    name: request.name.map(str::to_owned),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client())
            .create(&PostParams::default(), &review)
            .await
            .with_context(|| format!("SubjectAccessReview for {} {request:?}", subject.user))?;
        Ok(answer.status.is_some_and(|status| status.allowed))
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.user)
    }
}
