//! The restart fault (`FaultKind::Restart`): the stand-in answers like a kube-apiserver restarting
//! over the same etcd — down, then 403, 429 and 504, with 410 for resumed watches — and keeps
//! every object.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube_standin::faults::FaultSpec;
use kube_standin::ApiServer;

/// What one GET got: `0` for a connection error, else the HTTP code.
async fn outcome(leases: &Api<Lease>) -> u16 {
    match leases.get("kept").await {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(_) => 0,
    }
}

/// A watch from `rv`: its HTTP code or the code of an error event first in the stream.
async fn watch_code(leases: &Api<Lease>, rv: &str) -> Option<u16> {
    match leases.watch(&WatchParams::default().timeout(1), rv).await {
        Err(kube::Error::Api(s)) => Some(s.code),
        Err(_) => Some(0),
        Ok(stream) => {
            let mut stream = stream.boxed();
            match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
                Ok(Some(Ok(WatchEvent::Error(e)))) => Some(e.code),
                Ok(Some(Err(kube::Error::Api(s)))) => Some(s.code),
                _ => None,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_answers_like_a_restarting_server_and_keeps_objects() {
    let api = ApiServer::new();
    let leases: Api<Lease> = Api::namespaced(api.client_as("t"), "default");
    let mut l = Lease::default();
    l.metadata.name = Some("kept".into());
    let created = leases.create(&PostParams::default(), &l).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    // An open watch is cut when the restart begins.
    let mut open = leases
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    // 2 s per phase: a loaded machine still sees each of them.
    let window = Duration::from_secs(8);
    api.faults().add(FaultSpec::restart(window));
    let cut = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(ev) = open.next().await {
            if ev.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the open watch survived the restart");
    // Every outcome, in order (consecutive repeats folded), until the window has passed.
    let start = tokio::time::Instant::now();
    let mut seen: Vec<u16> = Vec::new();
    let mut watch_codes = Vec::new();
    while start.elapsed() < window + Duration::from_millis(500) {
        let o = outcome(&leases).await;
        if seen.last() != Some(&o) {
            seen.push(o);
        }
        if o == 429 {
            watch_codes.push(watch_code(&leases, &rv).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, vec![0, 403, 429, 504, 200], "outcomes in order");
    assert!(
        !watch_codes.is_empty() && watch_codes.iter().all(|c| *c == Some(410)),
        "resumed watches during the restart: {watch_codes:?}"
    );
    // Afterwards: the object is there, unchanged, and a watch from its RV works again.
    let now = leases.get("kept").await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(watch_code(&leases, &rv).await, None);
}
