//! The bound on concurrent QA questions, through the router: anyone may ask (GET), so a flood of
//! questions gets 503 with a clear message once the slots are taken, and answers resume when they
//! free up.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use buildmesh_protocol::identity::NodeKey;
use buildmesh_protocol::mesh::TrustConfig;
use buildmesh_protocol::qa::ReadyRule;
use buildmesh_protocol::store_path::StoreDir;
use tower_service::Service as _;

use crate::qa::{QaContext, QaParams};
use crate::store::Store;

fn context(dir: &std::path::Path) -> QaContext {
    let store = Store::open(dir).expect("store");
    let key = Arc::new(NodeKey::from_seed("qa-busy", [9; 32]).expect("key"));
    QaContext::new(QaParams {
        store,
        store_dir: StoreDir::nix(),
        key,
        mesh: None,
        trust: TrustConfig {
            trusted: Some(BTreeSet::new()),
            quorum: 2,
            needs_native: false,
            no_emulation_for: Default::default(),
        },
        rule: ReadyRule::default(),
        replicas: 2,
        local: crate::qa::explain::LocalCapabilities::default(),
    })
}

async fn get(router: &mut axum::Router, uri: &str) -> (StatusCode, String) {
    let req = Request::builder().uri(uri).body(Body::empty()).expect("request");
    let resp = router.call(req).await.expect("infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn questions_beyond_the_slots_get_503_then_answers_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context(dir.path());
    let mut router = super::router(ctx.clone());
    // Free slots: an unknown revision is a plain 404.
    let (status, body) = get(&mut router, "/api/v1/revisions/qa@nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Every slot busy (two long questions in progress): a flood of anonymous questions waits,
    // then each gets 503 naming the bound, and none is answered out of turn.
    let a = ctx.slot().await.expect("slot 1");
    let b = ctx.slot().await.expect("slot 2");
    let flood: Vec<_> = (0..8)
        .map(|i| {
            let mut r = router.clone();
            tokio::spawn(async move { get(&mut r, &format!("/api/v1/compare?base=qa@a{i}&target=qa@b{i}")).await })
        })
        .collect();
    for task in flood {
        let (status, body) = task.await.expect("task");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("QA questions already"), "{body}");
    }
    drop((a, b));
    let (status, body) = get(&mut router, "/api/v1/revisions/qa@nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
