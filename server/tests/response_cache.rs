//! The response cache is scoped by tenant, caller and request: one caller's
//! cached answer is never served to another caller of the same tenant.

mod common;

use bulkhead_server::api_keys::generate_api_key;
use common::{TestServer, Upstream, call, config, github_connector, text_of};
use serde_json::json;

#[tokio::test]
async fn one_callers_cache_entry_never_answers_another_caller() {
    let upstream = Upstream::start("A").await;
    let alice = generate_api_key().unwrap();
    let bob = generate_api_key().unwrap();
    let server = TestServer::start(
        "cache-callers",
        &config("tenant-a", &github_connector(&upstream.url), ""),
        &[("alice", &alice), ("bob", &bob)],
        &[("token", "token-of-a")],
        &["--response-cache-seconds", "60"],
    )
    .await;
    let args = json!({"owner": "o", "repo": "r"});

    // alice's second call is answered from her cache entry.
    let alice_client = server.client(&alice).await.unwrap();
    for _ in 0..2 {
        let result = call(&alice_client, "github_get_repository", args.clone()).await;
        assert_eq!(result.is_error, Some(false), "{}", text_of(&result));
    }
    assert_eq!(upstream.seen().len(), 1, "alice's repeat should be cached");

    // bob asks for the same resource: the upstream answers him, not alice's entry.
    let bob_client = server.client(&bob).await.unwrap();
    let result = call(&bob_client, "github_get_repository", args.clone()).await;
    assert_eq!(result.is_error, Some(false), "{}", text_of(&result));
    assert_eq!(
        upstream.seen().len(),
        2,
        "bob was served the entry fetched for alice"
    );

    // bob's own entry then serves bob, and a different request misses.
    call(&bob_client, "github_get_repository", args.clone()).await;
    assert_eq!(upstream.seen().len(), 2, "bob's repeat should be cached");
    call(
        &bob_client,
        "github_get_repository",
        json!({"owner": "o", "repo": "other"}),
    )
    .await;
    assert_eq!(upstream.seen().len(), 3);

    alice_client.cancel().await.unwrap();
    bob_client.cancel().await.unwrap();
    let server = server.stop().await;
    let calls = server
        .audit()
        .into_iter()
        .filter(|l| l["method"] == "tools/call")
        .count();
    assert_eq!(calls, 5);
}
