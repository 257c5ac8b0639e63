//! The API stand-in driven through kube::Api (in-process) and over HTTP.

use ferrolb::apiserver::faults::FaultSpec;
use ferrolb::apiserver::ApiServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;
use std::time::Duration;

fn svc(name: &str, labels: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap()
}

fn lease(name: &str, holder: &str) -> Lease {
    serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10,
                 "acquireTime": "2026-11-22T07:58:05.123456Z", "renewTime": "2026-11-22T07:58:05.123456Z"}
    }))
    .unwrap()
}

#[tokio::test]
async fn service_create_get_list_defaults_and_conflict() {
    let server = ApiServer::new();
    let client = server.client();
    let api: Api<Service> = Api::namespaced(client, "default");
    let created = api
        .create(
            &PostParams::default(),
            &svc("web", json!({"app": "web", "env": "a"})),
        )
        .await
        .unwrap();
    let spec = created.spec.clone().unwrap();
    let ip = spec.cluster_ip.clone().unwrap();
    assert!(ip.starts_with("203.0.113."), "{ip}");
    let np = spec.ports.as_ref().unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&np));
    assert_eq!(spec.session_affinity.as_deref(), Some("None"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
    assert_eq!(
        created.metadata.generation, None,
        "Services have no generation"
    );
    // AlreadyExists
    let err = api
        .create(&PostParams::default(), &svc("web", json!({})))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "AlreadyExists");
        }
        e => panic!("{e}"),
    }
    api.create(
        &PostParams::default(),
        &svc("api", json!({"app": "api", "env": "b"})),
    )
    .await
    .unwrap();
    let l = api
        .list(&ListParams::default().labels("env in (a,c)"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    assert_eq!(l.items[0].metadata.name.as_deref(), Some("web"));
    let l = api
        .list(&ListParams::default().fields("metadata.name=api"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    // stale update conflicts
    let mut a = api.get("web").await.unwrap();
    let mut b = a.clone();
    a.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("x".into(), "1".into());
    api.replace("web", &PostParams::default(), &a)
        .await
        .unwrap();
    b.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("x".into(), "2".into());
    let err = api
        .replace("web", &PostParams::default(), &b)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err}"
    );
    // a PUT keeps the allocated clusterIP
    let got = api.get("web").await.unwrap();
    assert_eq!(got.spec.unwrap().cluster_ip.unwrap(), ip);
}

#[tokio::test]
async fn lease_race_exactly_one_wins() {
    let server = ApiServer::new();
    let a: Api<Lease> = Api::namespaced(server.client_as("node-a"), "default");
    let b: Api<Lease> = Api::namespaced(server.client_as("node-b"), "default");
    a.create(&PostParams::default(), &lease("vip", "old-holder"))
        .await
        .unwrap();
    let seen_a = a.get("vip").await.unwrap();
    let seen_b = b.get("vip").await.unwrap();
    let mut wa = seen_a.clone();
    wa.spec.as_mut().unwrap().holder_identity = Some("node-a".into());
    let mut wb = seen_b.clone();
    wb.spec.as_mut().unwrap().holder_identity = Some("node-b".into());
    wb.spec.as_mut().unwrap().lease_transitions = Some(1);
    let pp = PostParams::default();
    let (ra, rb) = tokio::join!(a.replace("vip", &pp, &wa), b.replace("vip", &pp, &wb));
    assert!(
        ra.is_ok() != rb.is_ok(),
        "exactly one writer wins: {ra:?} {rb:?}"
    );
    let winner = if ra.is_ok() { "node-a" } else { "node-b" };
    let loser = if ra.is_ok() {
        rb.unwrap_err()
    } else {
        ra.unwrap_err()
    };
    assert!(
        matches!(loser, kube::Error::Api(ref s) if s.code == 409 && s.message.contains("leases.coordination.k8s.io")),
        "{loser}"
    );
    let final_ = a.get("vip").await.unwrap();
    assert_eq!(
        final_.spec.unwrap().holder_identity.as_deref(),
        Some(winner)
    );
    assert!(server.request_count("update", "leases") >= 2);
}

#[tokio::test]
async fn lease_microtime_without_fraction_is_400() {
    let server = ApiServer::new();
    let bad = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "x"},
        "spec": {"renewTime": "2026-11-22T07:58:05Z"}});
    let lapi: Api<kube::api::DynamicObject> = Api::namespaced_with(
        server.client(),
        "default",
        &kube::api::ApiResource::erase::<Lease>(&()),
    );
    let obj: kube::api::DynamicObject = serde_json::from_value(bad).unwrap();
    let err = lapi.create(&PostParams::default(), &obj).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400 && s.message.contains("cannot parse \"Z\" as \".000000\"")),
        "{err}"
    );
}

#[tokio::test]
async fn watch_sees_changes_and_status_subresource() {
    let server = ApiServer::new();
    let api: Api<Service> = Api::namespaced(server.client(), "default");
    let l = api.list(&ListParams::default()).await.unwrap();
    let rv = l.metadata.resource_version.unwrap();
    let mut stream = api
        .watch(&WatchParams::default().timeout(20), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &svc("w", json!({"app": "w"})))
        .await
        .unwrap();
    let st = api
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}, "spec": {"type": "ClusterIP"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        st.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer"),
        "status write ignores spec"
    );
    let ing = &st
        .status
        .as_ref()
        .unwrap()
        .load_balancer
        .as_ref()
        .unwrap()
        .ingress
        .as_ref()
        .unwrap()[0];
    assert_eq!(ing.ip_mode.as_deref(), Some("VIP"));
    // main-resource write with only a status change is a no-op keeping the RV
    let before = st.metadata.resource_version.clone();
    let after = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {}}})),
        )
        .await
        .unwrap();
    assert_eq!(after.metadata.resource_version, before);
    api.delete("w", &DeleteParams::default()).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await {
            Ok(Ok(Some(WatchEvent::Added(_)))) => kinds.push("ADDED"),
            Ok(Ok(Some(WatchEvent::Modified(_)))) => kinds.push("MODIFIED"),
            Ok(Ok(Some(WatchEvent::Deleted(_)))) => kinds.push("DELETED"),
            Ok(Ok(Some(_))) => {}
            other => panic!("watch ended early: {other:?}"),
        }
    }
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
}

#[tokio::test]
async fn http_serve_and_fault_injection() {
    let server = ApiServer::new();
    let (addr, _task) = server.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let kc = ApiServer::kubeconfig(&format!("http://{addr}"), "node-x");
    let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_str(&kc).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let api: Api<Lease> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &lease("l1", "node-x"))
        .await
        .unwrap();
    let id = server
        .faults()
        .add(FaultSpec::error(500).for_client("node-x"));
    let err = api.get("l1").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 500),
        "{err}"
    );
    // another identity is not affected
    let other: Api<Lease> = Api::namespaced(server.client_as("node-y"), "default");
    other.get("l1").await.unwrap();
    server.faults().remove(id);
    // a 503 for a short period: kube's client retries 503 and gets through once it ends
    server
        .faults()
        .add(FaultSpec::error(503).for_duration(Duration::from_millis(300)));
    api.get("l1").await.unwrap();
    assert!(server
        .request_counts()
        .iter()
        .any(|(c, v, _, n)| c == "node-x" && v == "fault" && *n >= 1));
    let id = server.faults().refuse();
    assert!(api.get("l1").await.is_err());
    server.faults().remove(id);
    let got = api.get("l1").await.unwrap();
    assert_eq!(got.spec.unwrap().holder_identity.as_deref(), Some("node-x"));
    let counts = server.request_counts();
    assert!(counts
        .iter()
        .any(|(c, v, r, n)| c == "node-x" && v == "get" && r == "leases" && *n >= 1));
}
