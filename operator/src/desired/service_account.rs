//! The server's ServiceAccount.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::context::BuildContext;
use super::names::SERVICE_ACCOUNT_NAME;

/// The server's ServiceAccount. Token automount is off: the Deployment
/// mounts a short-lived projected token instead, so no long-lived token of
/// this account exists in any pod.
pub(crate) fn desired_service_account(ctx: &BuildContext<'_>) -> ServiceAccount {
    ServiceAccount {
        metadata: ctx.metadata(SERVICE_ACCOUNT_NAME, true),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

#[cfg(test)]
mod tests {
    use crate::desired::fixtures::{MINIMAL, objects};
    use crate::labels::child_labels;

    #[test]
    fn service_account_never_automounts_a_token() {
        let account = objects(MINIMAL).service_account;
        assert_eq!(account.metadata.name.as_deref(), Some("mcp-server"));
        assert_eq!(account.metadata.namespace.as_deref(), Some("bulkhead-acme"));
        assert_eq!(account.metadata.labels, Some(child_labels("acme")));
        assert_eq!(account.automount_service_account_token, Some(false));
        assert_eq!(account.secrets, None);
        assert_eq!(account.image_pull_secrets, None);
    }
}
