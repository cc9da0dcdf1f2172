//! The `github` connector: read-only tools over the GitHub REST API (or
//! GitHub Enterprise, or a test upstream: the base URL is configurable).
//!
//! Every argument that ends up in a URL path is checked against GitHub's
//! naming rules and added as an encoded path segment, so no argument can
//! change which endpoint is called.

use std::sync::Arc;

use futures::future::BoxFuture;
use rmcp::model::{ContentBlock, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::upstream::Upstream;
use super::{Connector, schema_object, upstream_failure};
use crate::identity::CallContext;
use crate::response_cache::{CacheKey, CachedResponse};
use crate::tools::{MAX_CACHED_BODY_BYTES, ToolCall, ToolOutcome, ToolServices};

/// The tools of a GitHub connector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GithubTool {
    /// `GET /repos/{owner}/{repo}`
    GetRepository,
    /// `GET /repos/{owner}/{repo}/issues`
    ListIssues,
    /// `GET /search/issues`
    SearchIssues,
    /// `GET /repos/{owner}/{repo}/issues/{issue_number}`
    GetIssue,
    /// `GET /repos/{owner}/{repo}/pulls`
    ListPullRequests,
    /// `GET /repos/{owner}/{repo}/contents/{path}`
    GetFileContents,
}

impl GithubTool {
    /// Every tool, in listing order.
    pub const ALL: [Self; 6] = [
        Self::GetRepository,
        Self::ListIssues,
        Self::SearchIssues,
        Self::GetIssue,
        Self::ListPullRequests,
        Self::GetFileContents,
    ];

    /// Tool name suffix (the full name is `<connector>_<suffix>`).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::GetRepository => "get_repository",
            Self::ListIssues => "list_issues",
            Self::SearchIssues => "search_issues",
            Self::GetIssue => "get_issue",
            Self::ListPullRequests => "list_pull_requests",
            Self::GetFileContents => "get_file_contents",
        }
    }

    /// Description shown in `tools/list`.
    pub fn description(self) -> &'static str {
        match self {
            Self::GetRepository => "Get a repository's metadata.",
            Self::ListIssues => {
                "List issues of a repository (pull requests included, as GitHub does)."
            }
            Self::SearchIssues => "Search issues and pull requests with GitHub search syntax.",
            Self::GetIssue => "Get one issue by number.",
            Self::ListPullRequests => "List pull requests of a repository.",
            Self::GetFileContents => {
                "Get a file (decoded text when it is UTF-8) or a directory listing."
            }
        }
    }

    /// JSON schema of the tool's arguments.
    pub fn input_schema(self) -> schemars::Schema {
        match self {
            Self::GetRepository => schemars::schema_for!(RepositoryArgs),
            Self::ListIssues => schemars::schema_for!(ListIssuesArgs),
            Self::SearchIssues => schemars::schema_for!(SearchIssuesArgs),
            Self::GetIssue => schemars::schema_for!(IssueArgs),
            Self::ListPullRequests => schemars::schema_for!(ListPullRequestsArgs),
            Self::GetFileContents => schemars::schema_for!(FileContentsArgs),
        }
    }

    /// The upstream URL for `arguments`, or a message saying which argument
    /// is wrong.
    pub fn url(self, base: &Url, arguments: serde_json::Value) -> Result<Url, String> {
        fn parse<T: for<'de> Deserialize<'de>>(v: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| format!("invalid arguments: {e}"))
        }
        match self {
            Self::GetRepository => {
                let a: RepositoryArgs = parse(arguments)?;
                build(base, &["repos", &name(&a.owner)?, &name(&a.repo)?], &[])
            }
            Self::ListIssues => {
                let a: ListIssuesArgs = parse(arguments)?;
                let mut query = paging(a.per_page, a.page)?;
                if let Some(state) = a.state {
                    query.push(("state", state.as_str().to_owned()));
                }
                if let Some(labels) = a.labels {
                    query.push(("labels", labels));
                }
                build(
                    base,
                    &["repos", &name(&a.owner)?, &name(&a.repo)?, "issues"],
                    &query,
                )
            }
            Self::SearchIssues => {
                let a: SearchIssuesArgs = parse(arguments)?;
                if a.query.trim().is_empty() || a.query.len() > 256 {
                    return Err("query must be 1-256 characters".into());
                }
                let mut query = paging(a.per_page, a.page)?;
                query.push(("q", a.query));
                build(base, &["search", "issues"], &query)
            }
            Self::GetIssue => {
                let a: IssueArgs = parse(arguments)?;
                build(
                    base,
                    &[
                        "repos",
                        &name(&a.owner)?,
                        &name(&a.repo)?,
                        "issues",
                        &a.issue_number.to_string(),
                    ],
                    &[],
                )
            }
            Self::ListPullRequests => {
                let a: ListPullRequestsArgs = parse(arguments)?;
                let mut query = paging(a.per_page, a.page)?;
                if let Some(state) = a.state {
                    query.push(("state", state.as_str().to_owned()));
                }
                build(
                    base,
                    &["repos", &name(&a.owner)?, &name(&a.repo)?, "pulls"],
                    &query,
                )
            }
            Self::GetFileContents => {
                let a: FileContentsArgs = parse(arguments)?;
                let owner = name(&a.owner)?;
                let repo = name(&a.repo)?;
                let mut segments = vec!["repos", owner.as_str(), repo.as_str(), "contents"];
                for part in a
                    .path
                    .trim_matches('/')
                    .split('/')
                    .filter(|p| !p.is_empty())
                {
                    if part == "."
                        || part == ".."
                        || part.contains('\\')
                        || part.chars().any(char::is_control)
                    {
                        return Err(
                            "path must be a plain repository path without '.' or '..'".into()
                        );
                    }
                    segments.push(part);
                }
                let mut query = Vec::new();
                if let Some(reference) = a.reference {
                    if reference.is_empty()
                        || reference.len() > 255
                        || reference.contains("..")
                        || reference
                            .chars()
                            .any(|c| c.is_control() || c == ' ' || c == '\\')
                    {
                        return Err("ref must be a branch, tag or commit".into());
                    }
                    query.push(("ref", reference));
                }
                build(base, &segments, &query)
            }
        }
    }
}

/// Owner and repository names: GitHub allows letters, digits, `-`, `_`, `.`.
fn name(value: &str) -> Result<String, String> {
    let ok = (1..=100).contains(&value.len())
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a valid GitHub owner or repository name"
        ))
    }
}

fn paging(per_page: Option<u32>, page: Option<u32>) -> Result<Vec<(&'static str, String)>, String> {
    let mut query = Vec::new();
    if let Some(per_page) = per_page {
        if !(1..=100).contains(&per_page) {
            return Err("per_page must be between 1 and 100".into());
        }
        query.push(("per_page", per_page.to_string()));
    }
    if let Some(page) = page {
        if page == 0 {
            return Err("page starts at 1".into());
        }
        query.push(("page", page.to_string()));
    }
    Ok(query)
}

fn build(base: &Url, segments: &[&str], query: &[(&str, String)]) -> Result<Url, String> {
    let mut url = base.clone();
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|()| "the connector's base URL cannot take a path".to_owned())?;
        path.pop_if_empty();
        path.extend(segments);
    }
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
    }
    Ok(url)
}

/// Arguments naming a repository.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RepositoryArgs {
    /// Account or organisation that owns the repository.
    pub owner: String,
    /// Repository name.
    pub repo: String,
}

/// Issue or pull request state filter.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateFilter {
    /// Open only (GitHub's default).
    Open,
    /// Closed only.
    Closed,
    /// Both.
    All,
}

impl StateFilter {
    fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::All => "all",
        }
    }
}

/// Arguments of `list_issues`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListIssuesArgs {
    /// Account or organisation that owns the repository.
    pub owner: String,
    /// Repository name.
    pub repo: String,
    /// State filter.
    #[serde(default)]
    pub state: Option<StateFilter>,
    /// Comma-separated label names.
    #[serde(default)]
    pub labels: Option<String>,
    /// Results per page (1-100).
    #[serde(default)]
    pub per_page: Option<u32>,
    /// Page number, from 1.
    #[serde(default)]
    pub page: Option<u32>,
}

/// Arguments of `search_issues`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SearchIssuesArgs {
    /// GitHub search query, e.g. `repo:owner/name is:open label:bug`.
    pub query: String,
    /// Results per page (1-100).
    #[serde(default)]
    pub per_page: Option<u32>,
    /// Page number, from 1.
    #[serde(default)]
    pub page: Option<u32>,
}

/// Arguments of `get_issue`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct IssueArgs {
    /// Account or organisation that owns the repository.
    pub owner: String,
    /// Repository name.
    pub repo: String,
    /// Issue number.
    pub issue_number: u64,
}

/// Arguments of `list_pull_requests`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListPullRequestsArgs {
    /// Account or organisation that owns the repository.
    pub owner: String,
    /// Repository name.
    pub repo: String,
    /// State filter.
    #[serde(default)]
    pub state: Option<StateFilter>,
    /// Results per page (1-100).
    #[serde(default)]
    pub per_page: Option<u32>,
    /// Page number, from 1.
    #[serde(default)]
    pub page: Option<u32>,
}

/// Arguments of `get_file_contents`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct FileContentsArgs {
    /// Account or organisation that owns the repository.
    pub owner: String,
    /// Repository name.
    pub repo: String,
    /// Path of the file or directory in the repository.
    pub path: String,
    /// Branch, tag or commit (default branch when absent).
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
}

/// Adds `decoded_text` to a file-contents answer whose `content` is base64
/// UTF-8 text, so callers need not decode it.
pub fn decode_file_contents(value: &mut serde_json::Value) {
    use base64::Engine;
    let Some(object) = value.as_object_mut() else {
        return;
    };
    if object.get("encoding").and_then(|e| e.as_str()) != Some("base64") {
        return;
    }
    let Some(content) = object.get("content").and_then(|c| c.as_str()) else {
        return;
    };
    let compact: String = content.chars().filter(|c| !c.is_whitespace()).collect();
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(compact)
        && let Ok(text) = String::from_utf8(bytes)
    {
        object.insert("decoded_text".into(), serde_json::Value::String(text));
    }
}

/// A `github` connector: every [`GithubTool`], named `<connector>_<suffix>`.
pub struct GithubConnector {
    upstream: Upstream,
    tools: Vec<(String, GithubTool)>,
}

impl GithubConnector {
    /// The connector over `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        let tools = GithubTool::ALL
            .into_iter()
            .map(|tool| (format!("{}_{}", upstream.name, tool.suffix()), tool))
            .collect();
        Self { upstream, tools }
    }
}

impl Connector for GithubConnector {
    fn tools(&self) -> Vec<Tool> {
        let read_only = ToolAnnotations::new().read_only(true);
        self.tools
            .iter()
            .map(|(name, tool)| {
                let input = serde_json::to_value(tool.input_schema()).unwrap_or_default();
                Tool::new(
                    name.clone(),
                    format!("{} (connector {})", tool.description(), self.upstream.name),
                    schema_object(&input),
                )
                .with_raw_output_schema(schema_object(&json!({
                    "type": "object",
                    "properties": {"data": {"description": "The GitHub API answer"}},
                    "required": ["data"]
                })))
                .with_annotations(read_only.clone())
            })
            .collect()
    }

    fn call<'a>(
        &'a self,
        tool: &'a str,
        arguments: Value,
        context: &'a CallContext,
        services: &'a ToolServices,
    ) -> BoxFuture<'a, ToolCall> {
        Box::pin(async move {
            let Some((_, tool)) = self.tools.iter().find(|(name, _)| name == tool) else {
                return ToolCall::error("unknown tool", ToolOutcome::ToolError, None);
            };
            let url = match tool.url(self.upstream.base(), arguments) {
                Ok(url) => url,
                Err(message) => return ToolCall::error(message, ToolOutcome::ToolError, None),
            };
            let mut call = fetch_json(&self.upstream, context, services, url).await;
            if *tool == GithubTool::GetFileContents
                && let Some(data) = call
                    .result
                    .structured_content
                    .as_mut()
                    .and_then(|v| v.get_mut("data"))
            {
                decode_file_contents(data);
                if let Some(value) = &call.result.structured_content {
                    call.result.content = vec![ContentBlock::text(value.to_string())];
                }
            }
            call
        })
    }
}

/// GET a JSON resource, through the cache scoped by tenant and caller.
async fn fetch_json(
    upstream: &Upstream,
    context: &CallContext,
    services: &ToolServices,
    url: Url,
) -> ToolCall {
    let key = CacheKey {
        tenant: context.tenant.clone(),
        caller: context.caller.clone(),
        connector: upstream.name.clone(),
        resource: url.to_string(),
    };
    if let Some(hit) = services.cache.get(&key) {
        return ToolCall::ok(json!({"data": *hit.body}), Some(hit.status));
    }
    let response = upstream
        .send(
            reqwest::Method::GET,
            url,
            &[
                ("accept", "application/vnd.github+json"),
                ("x-github-api-version", "2022-11-28"),
            ],
            None,
            &services.credentials,
        )
        .await;
    match response {
        Ok(response) => match serde_json::from_slice::<Value>(&response.body) {
            Ok(body) => {
                let body = Arc::new(body);
                // Large answers are not cached, which bounds the cache's
                // memory to its entry count times this size.
                if response.body.len() <= MAX_CACHED_BODY_BYTES {
                    services.cache.put(
                        key,
                        CachedResponse {
                            status: response.status,
                            body: body.clone(),
                        },
                    );
                }
                ToolCall::ok(json!({"data": *body}), Some(response.status))
            }
            Err(_) => ToolCall::error(
                format!(
                    "connector {}: the upstream answer is not JSON",
                    upstream.name
                ),
                ToolOutcome::UpstreamError,
                Some(response.status),
            ),
        },
        Err(error) => upstream_failure(upstream, services, &error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Url {
        Url::parse("https://ghe.example.com/api/v3").unwrap()
    }

    #[test]
    fn urls_are_built_from_checked_segments() {
        let url = GithubTool::GetIssue
            .url(
                &base(),
                json!({"owner": "o", "repo": "r", "issue_number": 7}),
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://ghe.example.com/api/v3/repos/o/r/issues/7"
        );
        let url = GithubTool::SearchIssues
            .url(&base(), json!({"query": "repo:o/r is:open", "per_page": 5}))
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://ghe.example.com/api/v3/search/issues?per_page=5&q=repo%3Ao%2Fr+is%3Aopen"
        );
        let url = GithubTool::GetFileContents
            .url(
                &base(),
                json!({"owner": "o", "repo": "r", "path": "src/a b.rs", "ref": "main"}),
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://ghe.example.com/api/v3/repos/o/r/contents/src/a%20b.rs?ref=main"
        );
    }

    #[test]
    fn arguments_cannot_escape_the_endpoint() {
        for args in [
            json!({"owner": "..", "repo": "r"}),
            json!({"owner": "o/../../admin", "repo": "r"}),
            json!({"owner": "o", "repo": "r?x=1"}),
            json!({"owner": "o"}),
        ] {
            assert!(GithubTool::GetRepository.url(&base(), args).is_err());
        }
        assert!(
            GithubTool::GetFileContents
                .url(
                    &base(),
                    json!({"owner": "o", "repo": "r", "path": "a/../../x"})
                )
                .is_err()
        );
        assert!(
            GithubTool::ListIssues
                .url(
                    &base(),
                    json!({"owner": "o", "repo": "r", "per_page": 1000})
                )
                .is_err()
        );
    }

    #[test]
    fn a_tenant_id_argument_is_ignored() {
        let url = GithubTool::GetRepository
            .url(
                &base(),
                json!({"owner": "o", "repo": "r", "tenantId": "other"}),
            )
            .unwrap();
        assert_eq!(url.as_str(), "https://ghe.example.com/api/v3/repos/o/r");
    }

    #[test]
    fn base64_file_contents_are_decoded() {
        let mut value = json!({"encoding": "base64", "content": "aGVs\nbG8="});
        decode_file_contents(&mut value);
        assert_eq!(value["decoded_text"], "hello");
    }
}
