//! Per-caller tool access (`spec.access`): which verified caller may see
//! and call which tool.
//!
//! No rule: every authenticated caller may use every tool. With rules, a
//! caller may use tool `T` when some rule names the caller among its
//! subjects and matches `T` among its tools. Subjects are method-qualified:
//! `apiKeyCaller` matches only API-key callers, `tokenSubject`, `group` and
//! `scope` only callers with a verified access token.

use bulkhead_crds::tenant::{AccessRule, AccessSubject};

use crate::identity::{AuthMethod, CallerId, TokenGrants};

/// The access rules of one server.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    rules: Vec<AccessRule>,
}

impl AccessPolicy {
    /// The policy for the configured rules (validated by the operator and
    /// the configuration loader: one field per subject, non-empty lists).
    pub fn new(rules: &[AccessRule]) -> Self {
        Self {
            rules: rules.to_vec(),
        }
    }

    /// Whether `caller` (with its token's `grants`) may see and call `tool`.
    pub fn allows(&self, caller: &CallerId, grants: &TokenGrants, tool: &str) -> bool {
        self.rules.is_empty()
            || self.rules.iter().any(|rule| {
                rule.subjects
                    .iter()
                    .any(|subject| subject_matches(subject, caller, grants))
                    && rule
                        .tools
                        .iter()
                        .any(|pattern| matches_pattern(pattern, tool))
            })
    }
}

fn subject_matches(subject: &AccessSubject, caller: &CallerId, grants: &TokenGrants) -> bool {
    match caller.method() {
        AuthMethod::ApiKey => subject.api_key_caller.as_deref() == Some(caller.as_str()),
        AuthMethod::OAuth => {
            subject.token_subject.as_deref() == Some(caller.as_str())
                || subject
                    .group
                    .as_ref()
                    .is_some_and(|g| grants.groups.contains(g))
                || subject
                    .scope
                    .as_ref()
                    .is_some_and(|s| grants.scopes.contains(s))
        }
        // The development caller of `--insecure-no-auth` matches no subject.
        AuthMethod::None => false,
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of
/// characters (also none) and every other character matches itself.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return pattern == name;
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, inner)) = middle.split_last() else {
        // No `*` at all.
        return rest.is_empty();
    };
    for part in inner {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(subjects: Vec<AccessSubject>, tools: &[&str]) -> AccessRule {
        AccessRule {
            subjects,
            tools: tools.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn patterns_match_runs_of_characters() {
        assert!(matches_pattern("*", ""));
        assert!(matches_pattern("*", "github_get_issue"));
        assert!(matches_pattern("github_*", "github_get_issue"));
        assert!(!matches_pattern("github_*", "api_get"));
        assert!(matches_pattern("*_get_*", "github_get_issue"));
        assert!(!matches_pattern("*_get_*", "github_list_issues"));
        assert!(matches_pattern("whoami", "whoami"));
        assert!(!matches_pattern("whoami", "whoami2"));
        assert!(!matches_pattern("who", "whoami"));
        assert!(matches_pattern("a*a", "aa"));
        assert!(!matches_pattern("a*a", "a"));
        assert!(matches_pattern("*issue", "github_get_issue"));
        assert!(!matches_pattern("*issue", "github_get_issues"));
    }

    #[test]
    fn no_rule_allows_every_authenticated_caller() {
        let policy = AccessPolicy::new(&[]);
        assert!(policy.allows(&CallerId::api_key("a"), &TokenGrants::default(), "x"));
    }

    #[test]
    fn subjects_are_qualified_by_how_the_caller_authenticated() {
        let policy = AccessPolicy::new(&[
            rule(
                vec![AccessSubject {
                    api_key_caller: Some("alice".into()),
                    ..AccessSubject::default()
                }],
                &["whoami"],
            ),
            rule(
                vec![
                    AccessSubject {
                        token_subject: Some("bob".into()),
                        ..AccessSubject::default()
                    },
                    AccessSubject {
                        group: Some("ops".into()),
                        ..AccessSubject::default()
                    },
                    AccessSubject {
                        scope: Some("github:read".into()),
                        ..AccessSubject::default()
                    },
                ],
                &["github_*"],
            ),
        ]);
        let none = TokenGrants::default();
        assert!(policy.allows(&CallerId::api_key("alice"), &none, "whoami"));
        assert!(!policy.allows(&CallerId::api_key("alice"), &none, "github_get_issue"));
        // The same id by token is another caller.
        assert!(!policy.allows(&CallerId::token("alice"), &none, "whoami"));
        assert!(!policy.allows(&CallerId::api_key("bob"), &none, "github_get_issue"));
        assert!(policy.allows(&CallerId::token("bob"), &none, "github_get_issue"));
        assert!(!policy.allows(&CallerId::token("bob"), &none, "whoami"));
        let ops = TokenGrants {
            groups: vec!["ops".into()],
            scopes: vec![],
        };
        assert!(policy.allows(&CallerId::token("carol"), &ops, "github_x"));
        // API-key callers carry no groups, whatever is passed.
        assert!(!policy.allows(&CallerId::api_key("carol"), &ops, "github_x"));
        let scoped = TokenGrants {
            groups: vec![],
            scopes: vec!["github:read".into()],
        };
        assert!(policy.allows(&CallerId::token("dave"), &scoped, "github_x"));
        assert!(!policy.allows(&CallerId::unauthenticated("anonymous"), &scoped, "github_x"));
    }
}
