//! Shipping artefacts: deploy/ (kustomize), charts/ferrolb (Helm), examples/, `ferrolb convert`.
//!
//! Needs `kubectl` (scripts/test.sh installs it) and, for the chart, Helm's engine through the
//! PyPI package `helm-python-sdk` (`pip install helm-python-sdk==0.2.2`, used by
//! charts/helm-template.py; there is no helm binary in Debian bookworm).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ferrolb_lab::convert::parse_documents;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferrolb");

/// The repository's root (examples, manifests and the chart live there, not in this crate).
fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn stdout_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn kubectl() -> Command {
    let mut c = Command::new("kubectl");
    // Never talk to whatever cluster the machine may know about.
    c.env("KUBECONFIG", "/nonexistent/ferrolb-test-kubeconfig");
    c
}

fn kustomize_objects() -> Vec<Value> {
    let y = stdout_ok(kubectl().args(["kustomize", "deploy/"]));
    parse_documents(&y).expect("kustomize output parses")
}

/// Renders the chart with Helm's engine (charts/helm-template.py); `None` values = defaults.
fn helm_template(values: &[&str], extra: &[&str]) -> Output {
    let mut c = Command::new("python3");
    c.arg("charts/helm-template.py").arg("charts/ferrolb");
    for v in values {
        c.args(["-f", v]);
    }
    c.args(extra);
    let out = run(&mut c);
    if out.status.code() == Some(3) {
        panic!(
            "helm-python-sdk is missing: `pip install helm-python-sdk==0.2.2` \
             (scripts/test.sh should install it)"
        );
    }
    out
}

fn helm_objects(values: &[&str]) -> Vec<Value> {
    let out = helm_template(values, &["--include-crds"]);
    assert!(
        out.status.success(),
        "chart rendering failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_documents(&String::from_utf8_lossy(&out.stdout)).expect("rendered chart parses")
}

fn key(o: &Value) -> (String, String, String) {
    (
        o["kind"].as_str().unwrap_or("").to_string(),
        o["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        o["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind}/{name} in {:?}",
                objs.iter().map(key).collect::<Vec<_>>()
            )
        })
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn container(o: &Value) -> &Value {
    &o["spec"]["template"]["spec"]["containers"][0]
}

fn arg_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")).map(String::from))
}

fn env_field_ref(c: &Value, name: &str) -> Option<String> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| {
            e["valueFrom"]["fieldRef"]["fieldPath"]
                .as_str()
                .map(String::from)
        })
}

/// (apiGroup, resource) -> verbs, over every rule of a (Cluster)Role.
fn grants(role: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut m: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_array().expect("rules") {
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                m.entry((g.clone(), r))
                    .or_default()
                    .extend(strs(&rule["verbs"]));
            }
        }
    }
    m
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Who (ServiceAccount name) is bound to which role in which namespace ("" = cluster-wide).
fn bindings(objs: &[Value]) -> Vec<(String, String, String)> {
    objs.iter()
        .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        .flat_map(|b| {
            let ns = b["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let role = b["roleRef"]["name"].as_str().unwrap_or("").to_string();
            b["subjects"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |s| {
                    (
                        s["name"].as_str().unwrap_or("").to_string(),
                        ns.clone(),
                        role.clone(),
                    )
                })
        })
        .collect()
}

/// The invariants both deploy/ and the chart must meet (issue 6 part 1).
fn check_install(objs: &[Value], ns: &str) {
    // CRDs ship with the install and are the generated ones.
    let crd_names: BTreeSet<String> = objs
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        crd_names,
        set(&[
            "l2announcementpolicies.ferrolb.io",
            "l2announcements.ferrolb.io",
            "loadbalancerippools.ferrolb.io"
        ])
    );

    // Controller Deployment.
    let dep = find(objs, "Deployment", "ferrolb-controller");
    assert_eq!(dep["metadata"]["namespace"], ns);
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "ferrolb-controller");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = container(dep);
    let cargs = strs(&c["args"]);
    assert_eq!(cargs[0], "controller");
    assert_eq!(
        env_field_ref(c, "POD_NAME").as_deref(),
        Some("metadata.name")
    );
    assert_eq!(
        env_field_ref(c, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        c["resources"]["requests"].is_object() && c["resources"]["limits"]["memory"].is_string()
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        strs(&c["securityContext"]["capabilities"]["drop"]),
        vec!["ALL"]
    );
    assert!(c["securityContext"]["capabilities"]["add"].is_null());
    let metrics_port = c["ports"][0]["containerPort"]
        .as_u64()
        .expect("metrics port");
    assert!(arg_value(&cargs, "--metrics-addr")
        .expect("--metrics-addr")
        .ends_with(&format!(":{metrics_port}")));
    let lease_name = arg_value(&cargs, "--lease-name").expect("--lease-name");

    // Agent DaemonSet.
    let ds = find(objs, "DaemonSet", "ferrolb-agent");
    assert_eq!(ds["metadata"]["namespace"], ns);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["serviceAccountName"], "ferrolb-agent");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    assert!(
        grace >= 15,
        "grace period {grace}s too short to release leases"
    );
    let tolerated: BTreeSet<String> = pod["tolerations"]
        .as_array()
        .expect("tolerations")
        .iter()
        .filter_map(|t| t["key"].as_str().map(String::from))
        .collect();
    assert!(tolerated.contains("node-role.kubernetes.io/control-plane"));
    let a = container(ds);
    let aargs = strs(&a["args"]);
    assert_eq!(aargs[0], "agent");
    assert_eq!(
        env_field_ref(a, "NODE_NAME").as_deref(),
        Some("spec.nodeName")
    );
    assert_eq!(
        arg_value(&aargs, "--node-name").as_deref(),
        Some("$(NODE_NAME)")
    );
    let caps = &a["securityContext"]["capabilities"];
    assert_eq!(strs(&caps["drop"]), vec!["ALL"]);
    assert_eq!(
        strs(&caps["add"]).into_iter().collect::<BTreeSet<_>>(),
        set(&["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(a["securityContext"]["privileged"], Value::Null);
    assert_eq!(a["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(a["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(
        a["resources"]["limits"]["cpu"].is_null(),
        "no CPU limit on the agent"
    );
    assert_eq!(a["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(a["readinessProbe"]["httpGet"]["path"], "/readyz");
    let lease_ns = arg_value(&aargs, "--lease-namespace").expect("agent --lease-namespace");
    assert_ne!(
        lease_ns, ns,
        "agent leases must be apart from the controller's Lease"
    );
    assert!(objs
        .iter()
        .any(|o| o["kind"] == "Namespace" && o["metadata"]["name"] == lease_ns.as_str()));

    // RBAC: controller.
    let cr = grants(find(objs, "ClusterRole", "ferrolb-controller"));
    let want: BTreeMap<(String, String), BTreeSet<String>> = [
        (("", "services"), set(&["get", "list", "watch"])),
        (("", "services/status"), set(&["update", "patch"])),
        // Namespace labels for pools' spec.namespaceSelector.
        (("", "namespaces"), set(&["get", "list", "watch"])),
        (
            ("ferrolb.io", "loadbalancerippools"),
            set(&["get", "list", "watch"]),
        ),
        (
            ("ferrolb.io", "loadbalancerippools/status"),
            set(&["update", "patch"]),
        ),
        (("events.k8s.io", "events"), set(&["create", "patch"])),
        (("", "events"), set(&["create", "patch"])),
    ]
    .into_iter()
    .map(|((g, r), v)| ((g.to_string(), r.to_string()), v))
    .collect();
    assert_eq!(cr, want, "controller ClusterRole is not least privilege");
    let lease_role = find(objs, "Role", "ferrolb-controller-lease");
    assert_eq!(lease_role["metadata"]["namespace"], ns);
    let rules = lease_role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(strs(&rules[0]["resourceNames"]), vec![lease_name.clone()]);
    let verbs: BTreeSet<String> = strs(&rules[0]["verbs"]).into_iter().collect();
    assert!(!verbs.contains("create") && !verbs.contains("delete") && !verbs.contains("*"));
    // ...so the Lease it holds ships with the install.
    let lease = find(objs, "Lease", &lease_name);
    assert_eq!(lease["metadata"]["namespace"], ns);

    // RBAC: agent.
    let ar = grants(find(objs, "ClusterRole", "ferrolb-agent"));
    for ((g, r), verbs) in &ar {
        let writes: Vec<&String> = verbs
            .iter()
            .filter(|v| !matches!(v.as_str(), "get" | "list" | "watch"))
            .collect();
        if !writes.is_empty() {
            assert!(
                matches!(
                    (g.as_str(), r.as_str()),
                    ("ferrolb.io", "l2announcementpolicies/status")
                        | ("ferrolb.io", "l2announcements")
                        | ("ferrolb.io", "l2announcements/status")
                        | ("events.k8s.io", "events")
                        | ("", "events")
                ),
                "agent may write {g}/{r}: {writes:?}"
            );
        }
        if (g.as_str(), r.as_str()) == ("ferrolb.io", "l2announcements") {
            // Created once per announced Service, deleted by its last holder when nobody
            // announces it; everything else goes through /status.
            assert_eq!(
                writes,
                vec!["create", "delete"],
                "agent may only create and delete L2Announcements"
            );
        }
        assert!(
            !r.starts_with("services")
                || !g.is_empty()
                || verbs
                    .iter()
                    .all(|v| ["get", "list", "watch"].contains(&v.as_str())),
            "agent writes Services"
        );
        // Pools: read only (policies limited to some pools attribute addresses by them).
        assert!(
            r != "loadbalancerippools/status"
                && (r != "loadbalancerippools"
                    || verbs
                        .iter()
                        .all(|v| ["get", "list", "watch"].contains(&v.as_str()))),
            "agent writes pools"
        );
        assert_ne!(r, "leases", "agent must not get leases cluster-wide");
    }
    for need in [
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
        ("ferrolb.io", "l2announcementpolicies"),
        ("ferrolb.io", "loadbalancerippools"),
    ] {
        assert!(
            ar.contains_key(&(need.0.to_string(), need.1.to_string())),
            "agent cannot read {need:?}"
        );
    }
    let agent_lease_role = find(objs, "Role", "ferrolb-agent-leases");
    assert_eq!(agent_lease_role["metadata"]["namespace"], lease_ns.as_str());
    let g = grants(agent_lease_role);
    assert_eq!(
        g.get(&("coordination.k8s.io".into(), "leases".into())),
        Some(&set(&[
            "create", "delete", "get", "list", "patch", "update", "watch"
        ]))
    );

    // Bindings: nobody but the agent gets anything in the lease namespace; the agent gets
    // nothing in the controller's namespace.
    let b = bindings(objs);
    for (sa, bns, role) in &b {
        if bns == &lease_ns {
            assert_eq!(sa, "ferrolb-agent", "{sa} bound to {role} in {bns}");
        }
        if bns == ns {
            assert_eq!(sa, "ferrolb-controller", "{sa} bound to {role} in {bns}");
        }
    }
    assert!(b.contains(&(
        "ferrolb-agent".into(),
        lease_ns.clone(),
        "ferrolb-agent-leases".into()
    )));
    assert!(b.contains(&(
        "ferrolb-controller".into(),
        ns.into(),
        "ferrolb-controller-lease".into()
    )));

    // API Priority and Fairness: the agent's Lease requests in the lease namespace, and
    // nothing else, go to a priority level of their own whose seats are not lent out.
    let fs = find(objs, "FlowSchema", "ferrolb-agent-leases");
    let plc_name = fs["spec"]["priorityLevelConfiguration"]["name"]
        .as_str()
        .expect("a priority level");
    let plc = find(objs, "PriorityLevelConfiguration", plc_name);
    assert_eq!(plc["spec"]["type"], "Limited");
    assert_eq!(plc["spec"]["limited"]["lendablePercent"], 0);
    let prec = fs["spec"]["matchingPrecedence"].as_i64().unwrap();
    assert!(
        prec > 900 && prec < 9000,
        "after the control plane's own schemas, before service-accounts: {prec}"
    );
    let rules = fs["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0]["subjects"],
        serde_json::json!([{"kind": "ServiceAccount",
            "serviceAccount": {"name": "ferrolb-agent", "namespace": ns}}])
    );
    assert_eq!(
        rules[0]["resourceRules"],
        serde_json::json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "verbs": ["*"], "namespaces": [lease_ns]}])
    );

    // Metrics Services select the pods and target the metrics ports.
    for (svc, comp) in [
        ("ferrolb-controller-metrics", "controller"),
        ("ferrolb-agent-metrics", "agent"),
    ] {
        let s = find(objs, "Service", svc);
        assert_eq!(s["spec"]["selector"]["app.kubernetes.io/component"], comp);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], "metrics");
        let owner = if comp == "controller" { dep } else { ds };
        for (k, v) in s["spec"]["selector"].as_object().unwrap() {
            assert_eq!(
                &owner["spec"]["template"]["metadata"]["labels"][k], v,
                "{svc} selects {k}"
            );
        }
    }
}

#[test]
fn deploy_kustomize_is_a_least_privilege_install() {
    let objs = kustomize_objects();
    check_install(&objs, "ferrolb-system");
    assert!(objs
        .iter()
        .any(|o| o["kind"] == "Namespace" && o["metadata"]["name"] == "ferrolb-system"));
    // Every namespaced object lives in one of the two namespaces.
    for o in &objs {
        if let Some(ns) = o["metadata"]["namespace"].as_str() {
            assert!(
                ["ferrolb-system", "ferrolb-leases"].contains(&ns),
                "{:?}",
                key(o)
            );
        }
    }
}

/// deploy/crds and charts/ferrolb/crds are copies (kustomize and Helm cannot reach ../crds):
/// they must equal what `ferrolb crds` generates from the types, and crds/ if present.
#[test]
fn crd_copies_are_not_stale() {
    let dir = tempfile::tempdir().unwrap();
    stdout_ok(
        Command::new(BIN)
            .args(["crds", "--out-dir"])
            .arg(dir.path()),
    );
    let mut generated = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        let want = std::fs::read_to_string(&p).unwrap();
        generated += 1;
        for copy_dir in ["deploy/crds", "charts/ferrolb/crds", "crds"] {
            let copy = root().join(copy_dir).join(&name);
            let got = std::fs::read_to_string(&copy)
                .unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
            // (No left/right dump: a CRD is hundreds of lines.)
            assert!(
                got == want,
                "{} is stale: run `ferrolb crds --out-dir crds && ferrolb crds --out-dir \
                 deploy/crds && ferrolb crds --out-dir charts/ferrolb/crds`",
                copy.display()
            );
        }
    }
    assert_eq!(generated, 3);
}

/// A running dev-apiserver (HTTP) with our CRDs, for kubectl's discovery.
struct DevApi {
    child: Child,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for DevApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dev_apiserver() -> Option<DevApi> {
    let help = run(Command::new(BIN).args(["dev-apiserver", "--help"]));
    if !String::from_utf8_lossy(&help.stdout).contains("--kubeconfig-out") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(BIN)
        .current_dir(root())
        .args([
            "dev-apiserver",
            "--listen",
            "127.0.0.1:0",
            "--crds",
            "deploy/crds",
            "--kubeconfig-out",
        ])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn dev-apiserver");
    // It prints its address once it listens (after writing the kubeconfig).
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(line);
            }
        }
    });
    let api = DevApi {
        child,
        kubeconfig,
        _dir: dir,
    };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(_) => Some(api),
        Err(_) => panic!("dev-apiserver did not report listening within 60 s"),
    }
}

/// `kubectl apply -k deploy/ --dry-run=client` against `ferrolb dev-apiserver` (kubectl needs a
/// server for discovery even in client dry-run). `--validate=false`: the stand-in serves no
/// protobuf OpenAPI document, and the schema checks are done by the tests above.
#[test]
fn kubectl_apply_k_dry_run_client() {
    let Some(api) = dev_apiserver() else {
        println!(
            "skipped: `ferrolb dev-apiserver --kubeconfig-out` not available in this build yet"
        );
        return;
    };
    // Every group/version the install uses must be served (a real kube-apiserver does).
    let mut missing = Vec::new();
    for gv in [
        "/api/v1",
        "/apis/apps/v1",
        "/apis/rbac.authorization.k8s.io/v1",
        "/apis/coordination.k8s.io/v1",
        "/apis/apiextensions.k8s.io/v1",
        "/apis/flowcontrol.apiserver.k8s.io/v1",
    ] {
        let out = run(Command::new("kubectl")
            .env("KUBECONFIG", &api.kubeconfig)
            .args(["get", "--raw", gv]));
        let body = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            missing.push(gv.to_string());
        } else if gv == "/api/v1" && !body.contains("\"serviceaccounts\"") {
            missing.push("/api/v1 serviceaccounts".into());
        }
    }
    assert!(
        missing.is_empty(),
        "dev-apiserver does not serve {missing:?} (needed for kubectl apply -k deploy/)"
    );
    let out = run(Command::new("kubectl")
        .env("KUBECONFIG", &api.kubeconfig)
        .args([
            "apply",
            "-k",
            "deploy/",
            "--dry-run=client",
            "--validate=false",
            "-o",
            "yaml",
        ]));
    assert!(
        out.status.success(),
        "kubectl apply -k deploy/ --dry-run=client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objs = parse_documents(&String::from_utf8_lossy(&out.stdout)).expect("parses");
    // kubectl prints one List (or the objects); either way every kustomize object is there.
    let got: BTreeSet<(String, String, String)> = objs.iter().map(key).collect();
    let want: BTreeSet<_> = kustomize_objects().iter().map(key).collect();
    assert_eq!(got, want);
}

#[test]
fn helm_chart_renders_the_same_install() {
    let helm = helm_objects(&[]);
    check_install(&helm, "ferrolb-system");
    // Same objects as deploy/, except the release namespace itself (Helm installs into it).
    let kust: BTreeSet<_> = kustomize_objects()
        .iter()
        .map(key)
        .filter(|k| !(k.0 == "Namespace" && k.2 == "ferrolb-system"))
        .collect();
    let got: BTreeSet<_> = helm.iter().map(key).collect();
    assert_eq!(got, kust);
    // Same RBAC rules and the same container arguments (the chart adds --log-level).
    let kobjs = kustomize_objects();
    for (kind, name) in [
        ("ClusterRole", "ferrolb-controller"),
        ("ClusterRole", "ferrolb-agent"),
        ("Role", "ferrolb-controller-lease"),
        ("Role", "ferrolb-agent-leases"),
    ] {
        assert_eq!(
            grants(find(&helm, kind, name)),
            grants(find(&kobjs, kind, name)),
            "{kind}/{name}"
        );
    }
    for (kind, name) in [
        ("Deployment", "ferrolb-controller"),
        ("DaemonSet", "ferrolb-agent"),
    ] {
        let h: Vec<String> = strs(&container(find(&helm, kind, name))["args"])
            .into_iter()
            .filter(|a| !a.starts_with("--log-level"))
            .collect();
        assert_eq!(
            h,
            strs(&container(find(&kobjs, kind, name))["args"]),
            "{kind}/{name} args"
        );
        assert_eq!(
            container(find(&helm, kind, name))["securityContext"],
            container(find(&kobjs, kind, name))["securityContext"]
        );
    }
}

#[test]
fn helm_chart_options_render_valid_objects() {
    let objs = helm_objects(&["charts/ferrolb/ci/all-options-values.yaml"]);
    check_install(&objs, "ferrolb-system");
    let cargs = strs(&container(find(&objs, "Deployment", "ferrolb-controller"))["args"]);
    for f in [
        "--log-json",
        "--no-default-class",
        "--serve-cilium-class",
        "--metallb-annotations",
    ] {
        assert!(cargs.contains(&f.to_string()), "{f} missing: {cargs:?}");
    }
    assert_eq!(
        arg_value(&cargs, "--lease-duration").as_deref(),
        Some("15s")
    );
    let aargs = strs(&container(find(&objs, "DaemonSet", "ferrolb-agent"))["args"]);
    for f in [
        "--no-sticky",
        "--serve-cilium-class",
        "--interfaces=^eth[0-9]+$",
        "--interfaces=^ens[0-9]+$",
    ] {
        assert!(aargs.contains(&f.to_string()), "{f} missing: {aargs:?}");
    }
    assert_eq!(
        arg_value(&aargs, "--gratuitous-count").as_deref(),
        Some("3")
    );
    assert_eq!(arg_value(&aargs, "--retry-period").as_deref(), Some("1s"));
    // Pools and the policy from values are valid ferrolb objects.
    let pool: ferrolb::api::LoadBalancerIPPool =
        serde_json::from_value(find(&objs, "LoadBalancerIPPool", "lan").clone()).expect("pool");
    assert_eq!(pool.spec.blocks.len(), 2);
    assert_eq!(pool.spec.allow_first_last_ips, ferrolb::api::YesNo::No);
    let spare: ferrolb::api::LoadBalancerIPPool =
        serde_json::from_value(find(&objs, "LoadBalancerIPPool", "spare").clone()).expect("pool");
    assert!(spare.spec.disabled);
    let pol: ferrolb::api::L2AnnouncementPolicy =
        serde_json::from_value(find(&objs, "L2AnnouncementPolicy", "default").clone())
            .expect("policy");
    assert_eq!(pol.spec.interfaces, vec!["^eth[0-9]+$", "^bond0\\.100$"]);
    for re in &pol.spec.interfaces {
        regex::Regex::new(re).expect("interface regex compiles");
    }
    assert!(objs.iter().any(|o| o["kind"] == "ServiceMonitor"));
    // Defaults create neither pools nor policies, and honour no MetalLB annotations.
    let defaults = helm_objects(&[]);
    let dargs = strs(&container(find(&defaults, "Deployment", "ferrolb-controller"))["args"]);
    assert!(
        !dargs.contains(&"--metallb-annotations".to_string()),
        "{dargs:?}"
    );
    assert!(!defaults
        .iter()
        .any(|o| o["kind"] == "LoadBalancerIPPool" || o["kind"] == "L2AnnouncementPolicy"));
}

#[test]
fn helm_chart_rejects_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, why) in [
        ("logFormat: xml\n", "logFormat"),
        ("agent:\n  lease:\n    duration: fast\n", "/agent/lease/duration"),
        (
            "pools:\n  - name: x\n    blocks: [{cidr: 198.51.100.0/24}]\n    allowFirstLastIPs: true\n",
            "allowFirstLastIPs",
        ),
        (
            "leases:\n  namespace: ferrolb-system\n",
            "leases.namespace must differ",
        ),
        (
            "pools:\n  - blocks: [{cidr: 198.51.100.0/24}]\n",
            "pools[].name is required",
        ),
    ] {
        let f = dir.path().join("bad.yaml");
        std::fs::write(&f, bad).unwrap();
        let out = helm_template(&[f.to_str().unwrap()], &[]);
        assert!(!out.status.success(), "accepted {bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}

/// Replaces the kubelet's `$(VAR)` expansions with what they become in a pod.
fn expand(arg: &str) -> String {
    arg.replace("$(POD_NAME)", "ferrolb-controller-6d4f8b7c9-x2x4z")
        .replace("$(POD_NAMESPACE)", "ferrolb-system")
        .replace("$(NODE_NAME)", "node-1")
}

/// Every flag deploy/ and the chart (defaults and every option) pass to `ferrolb controller` /
/// `ferrolb agent` exists in its `--help`, and the whole argument list parses.
#[test]
fn manifest_flags_exist_in_help() {
    let mut sets: Vec<(String, Vec<String>)> = Vec::new();
    for objs in [
        kustomize_objects(),
        helm_objects(&[]),
        helm_objects(&["charts/ferrolb/ci/all-options-values.yaml"]),
    ] {
        for o in &objs {
            if o["kind"] == "Deployment" || o["kind"] == "DaemonSet" {
                let args = strs(&container(o)["args"]);
                sets.push((
                    args[0].clone(),
                    args[1..].iter().map(|a| expand(a)).collect(),
                ));
            }
        }
    }
    assert!(sets.len() >= 6);
    let mut missing = Vec::new();
    for (sub, args) in &sets {
        let help = stdout_ok(Command::new(BIN).args([sub.as_str(), "--help"]));
        for a in args {
            let flag = a.split('=').next().unwrap();
            let re =
                regex::Regex::new(&format!(r"(^|[\s,\[]){}([\s,=\[<]|$)", regex::escape(flag)))
                    .unwrap();
            if !help.lines().any(|l| re.is_match(l)) {
                missing.push(format!("ferrolb {sub} {flag}"));
            }
        }
        // The values parse too (clap checks each before acting on the trailing --help).
        let out = run(Command::new(BIN).arg(sub).args(args).arg("--help"));
        assert!(
            out.status.success() || !missing.is_empty(),
            "ferrolb {sub} {args:?} does not parse:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "flags passed by manifests but unknown: {missing:?}"
    );
}

fn example_files() -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                // examples/lab/ belongs to the lab and is checked by its tests.
                if !p.ends_with("lab") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    walk(&root().join("examples"), &mut v);
    v.sort();
    v
}

/// Every example parses; ferrolb kinds deserialize into the CRD types, Services into
/// core/v1 Services; only documentation address ranges are used.
#[test]
fn examples_parse_and_use_documentation_ranges() {
    let files = example_files();
    assert!(files.len() >= 10, "{files:?}");
    let doc_nets: Vec<ipnetwork::IpNetwork> = [
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8::/32",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let ip_re = regex::Regex::new(
        r"\b(\d{1,3}(?:\.\d{1,3}){3})\b|\b([0-9a-fA-F]{1,4}:[0-9a-fA-F:]*:[0-9a-fA-F:]*)",
    )
    .unwrap();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let docs = parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!docs.is_empty(), "{}", f.display());
        for d in docs {
            let what = format!("{} {:?}", f.display(), key(&d));
            match (d["apiVersion"].as_str(), d["kind"].as_str()) {
                (Some("ferrolb.io/v1alpha1"), Some("LoadBalancerIPPool")) => {
                    let p: ferrolb::api::LoadBalancerIPPool =
                        serde_json::from_value(d).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(!p.spec.blocks.is_empty(), "{what}");
                }
                (Some("ferrolb.io/v1alpha1"), Some("L2AnnouncementPolicy")) => {
                    let p: ferrolb::api::L2AnnouncementPolicy =
                        serde_json::from_value(d).unwrap_or_else(|e| panic!("{what}: {e}"));
                    for re in &p.spec.interfaces {
                        regex::Regex::new(re).unwrap_or_else(|e| panic!("{what}: {e}"));
                    }
                }
                (Some("v1"), Some("Service")) => {
                    let s: k8s_openapi::api::core::v1::Service =
                        serde_json::from_value(d).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(
                        s.spec.and_then(|s| s.type_).as_deref(),
                        Some("LoadBalancer"),
                        "{what}"
                    );
                }
                _ if d["kind"] == "Namespace" => {}
                _ if f.to_string_lossy().contains("/cilium/")
                    || f.to_string_lossy().contains("examples/migration/metallb/") => {}
                other => panic!("{what}: unexpected {other:?}"),
            }
        }
        for cap in ip_re.captures_iter(&text) {
            let s = cap.get(0).unwrap().as_str().trim_end_matches(':');
            let Ok(ip) = s.parse::<std::net::IpAddr>() else {
                continue;
            };
            assert!(
                doc_nets.iter().any(|n| n.contains(ip)),
                "{}: {ip} is not a documentation address",
                f.display()
            );
        }
    }
    // apps/: the foreign annotations are part of the example (and kept by us).
    let apps =
        parse_documents(&std::fs::read_to_string(root().join("examples/apps/apps.yaml")).unwrap())
            .unwrap();
    let echo = find(&apps, "Service", "echo");
    assert_eq!(
        echo["metadata"]["annotations"]["service.cilium.io/global"],
        "true"
    );
    assert_eq!(
        echo["metadata"]["annotations"]["service.cilium.io/affinity"],
        "local"
    );
    assert_eq!(echo["metadata"]["labels"]["lb-pool"], "app");
}

#[test]
fn convert_migration_example_matches_and_reports() {
    let out = run(Command::new(BIN).args([
        "convert",
        "-f",
        "examples/migration/cilium/cluster-pool-a-lb.yaml",
        "-f",
        "examples/migration/cilium/app-lb-pool-a.yaml",
        "-f",
        "examples/migration/cilium/global-service.yaml",
    ]));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = std::fs::read_to_string(root().join("examples/migration/converted.yaml")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        want,
        "examples/migration/converted.yaml is stale"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loadBalancerClass"), "{stderr}");
    // The converted objects are valid ferrolb objects, foreign annotations kept.
    let objs = parse_documents(&want).unwrap();
    let _: ferrolb::api::LoadBalancerIPPool =
        serde_json::from_value(find(&objs, "LoadBalancerIPPool", "app-pool").clone()).unwrap();
    let pol: ferrolb::api::L2AnnouncementPolicy =
        serde_json::from_value(find(&objs, "L2AnnouncementPolicy", "l2-policy").clone()).unwrap();
    assert!(pol.spec.load_balancer_ips && pol.spec.external_ips);
    let echo = find(&objs, "Service", "echo");
    assert_eq!(echo["spec"]["loadBalancerClass"], ferrolb::api::LB_CLASS);
    assert_eq!(
        echo["metadata"]["annotations"]["service.cilium.io/global"],
        "true"
    );

    // The old manifest: converts what it can, names what it cannot, exits 2.
    let out = run(Command::new(BIN).args([
        "convert",
        "-o",
        "json",
        "-f",
        "examples/migration/cilium/old-v2alpha1-pool.yaml",
    ]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CiliumBGPPeeringPolicy/bgp"), "{stderr}");
    assert!(
        stderr.contains("lbipam.cilium.io/no-such-annotation"),
        "{stderr}"
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("json List");
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["spec"]["blocks"][0]["cidr"], "203.0.113.0/28");
    assert_eq!(
        items[2]["metadata"]["annotations"]["ferrolb.io/ips"],
        "203.0.113.5"
    );

    // Unreadable input is an error, not a panic.
    let out = run(Command::new(BIN).args(["convert", "-f", "examples/no-such-file.yaml"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-file.yaml"));
}

/// examples/migration/metallb: the MetalLB configuration converts to the committed output,
/// exits 2 and names the BGPPeer (the L2Advertisement `l2-manual`'s pool selection converts).
#[test]
fn convert_metallb_example_matches_and_reports() {
    let out = run(Command::new(BIN).current_dir(root()).args([
        "convert",
        "-f",
        "examples/migration/metallb/metallb.yaml",
    ]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("l2-manual: spec.ipAddressPools"),
        "{stderr}"
    );
    assert!(stderr.contains("BGPPeer/tor"), "{stderr}");
    assert_eq!(stderr.matches("unconvertible:").count(), 1, "{stderr}");
    let want =
        std::fs::read_to_string(root().join("examples/migration/metallb/converted.yaml")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        want,
        "examples/migration/metallb/converted.yaml is stale"
    );
}

/// Converted output goes through kubectl's own YAML decoder unchanged (YAML 1.1 `Yes`/`No`).
#[test]
fn convert_output_survives_kubectl_yaml_decoding() {
    let out = run(Command::new(BIN).args([
        "convert",
        "-f",
        "examples/migration/cilium/old-v2alpha1-pool.yaml",
    ]));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("converted.yaml");
    std::fs::write(&f, &out.stdout).unwrap();
    // `kubectl create --dry-run=client -o json --validate=false` decodes locally only when it
    // can map kinds; `kubectl kustomize` reads through the same YAML stack without a server.
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources: [converted.yaml]\n",
    )
    .unwrap();
    let y = stdout_ok(kubectl().args(["kustomize"]).arg(dir.path()));
    let docs = parse_documents(&y).unwrap();
    let pool = docs
        .iter()
        .find(|d| d["kind"] == "LoadBalancerIPPool")
        .unwrap();
    assert_eq!(pool["spec"]["allowFirstLastIPs"], "No");
}

/// What each example's README documents: (files, [(namespace/name, addresses or reason)]).
type Expect = (
    &'static [&'static str],
    &'static [(&'static str, Result<&'static [&'static str], &'static str>)],
);

const EXAMPLES: &[Expect] = &[
    (
        &["examples/clustermesh/cluster-a.yaml"],
        &[("kube-system/clustermesh-apiserver", Ok(&["198.51.100.220"]))],
    ),
    (
        &["examples/clustermesh/cluster-b.yaml"],
        &[("kube-system/clustermesh-apiserver", Ok(&["198.51.100.221"]))],
    ),
    (
        &["examples/apps/apps.yaml"],
        &[
            ("echo/echo", Ok(&["198.51.100.230"])),
            ("echo/unlabelled", Err("NoPool")),
        ],
    ),
    (
        &["examples/dual-stack/dual-stack.yaml"],
        &[
            ("default/web", Ok(&["198.51.100.17", "2001:db8:100::1"])),
            ("default/needs-both", Err("NoPool")),
        ],
    ),
    (
        &["examples/shared-ip/shared-ip.yaml"],
        &[
            ("dns/dns-tcp", Ok(&["198.51.100.53"])),
            ("dns/dns-udp", Ok(&["198.51.100.53"])),
            ("dns/dns-tcp-again", Err("OutOfIPs")),
        ],
    ),
    (
        &["examples/local-traffic/local-traffic.yaml"],
        &[("ingress/ingress-nginx", Ok(&["198.51.100.65"]))],
    ),
    (
        &["examples/requested-ip/requested-ip.yaml"],
        &[
            ("default/by-field", Ok(&["198.51.100.110"])),
            ("default/by-annotation", Ok(&["198.51.100.111"])),
            ("default/any-address", Ok(&["198.51.100.100"])),
            ("default/outside-pools", Err("NoPool")),
        ],
    ),
    (
        &["examples/migration/converted.yaml"],
        &[("echo/echo", Ok(&["198.51.100.230"]))],
    ),
];

fn load(files: &[&str]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| parse_documents(&std::fs::read_to_string(root().join(f)).unwrap()).unwrap())
        .collect()
}

/// The documented allocations, from the allocator that `ferrolb plan` and the controller use
/// (pools first, then every Service in namespace/name order, as `ferrolb plan` does).
#[test]
fn examples_allocate_as_documented() {
    use ferrolb::ipam::{Allocator, PoolDef, ServiceReq};
    for (files, expected) in EXAMPLES {
        let docs = load(files);
        let mut alloc = Allocator::new();
        for d in docs.iter().filter(|d| d["kind"] == "LoadBalancerIPPool") {
            let pool: ferrolb::api::LoadBalancerIPPool = serde_json::from_value(d.clone()).unwrap();
            let (def, errors) = PoolDef::from_crd(&pool);
            assert!(errors.is_empty(), "{files:?}: {errors:?}");
            alloc.set_pool(def);
        }
        let mut services: Vec<k8s_openapi::api::core::v1::Service> = docs
            .iter()
            .filter(|d| d["kind"] == "Service")
            .map(|d| serde_json::from_value(d.clone()).unwrap())
            .collect();
        services.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
        assert_eq!(
            services.len(),
            expected.len(),
            "{files:?}: every Service is documented"
        );
        let opts = ferrolb::ipam::ClassOptions::default();
        let mut got = BTreeMap::new();
        for s in &services {
            assert!(
                ferrolb::ipam::is_ours(s, &opts),
                "{files:?}: {:?} not ours",
                s.metadata.name
            );
            let req = ServiceReq::from_service(s);
            alloc.ensure(&req);
        }
        // Read the final outcomes (a later Service may change nothing of an earlier one).
        for s in &services {
            let key = ferrolb::ipam::ServiceKey::of(s);
            let out = alloc.outcome(&key).expect("outcome").clone();
            let name = format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or("default"),
                s.metadata.name.as_deref().unwrap_or("")
            );
            let v = if out.is_satisfied() {
                Ok(out.ips().iter().map(|i| i.to_string()).collect::<Vec<_>>())
            } else {
                assert!(out.ips().is_empty());
                Err(out.reason.as_str().to_string())
            };
            got.insert(name, v);
        }
        for (svc, want) in *expected {
            let want = want
                .map(|a| a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(|r| r.to_string());
            assert_eq!(got.get(*svc), Some(&want), "{files:?} {svc}: {got:?}");
        }
    }
}

/// Pools of the clusters of one mesh must not overlap: cluster-a and cluster-b are disjoint,
/// the broken cluster-b collides (the allocator's overlap detection, as `plan --cluster` uses).
#[test]
fn clustermesh_pools_do_not_overlap_across_clusters() {
    use ferrolb::ipam::{Allocator, PoolDef};
    let conflicts = |a: &str, b: &str| -> Vec<String> {
        let mut alloc = Allocator::new();
        for (cluster, file) in [("a", a), ("b", b)] {
            for d in load(&[file])
                .iter()
                .filter(|d| d["kind"] == "LoadBalancerIPPool")
            {
                let mut pool: ferrolb::api::LoadBalancerIPPool =
                    serde_json::from_value(d.clone()).unwrap();
                let name = format!("{cluster}-{}", pool.metadata.name.as_deref().unwrap_or(""));
                pool.metadata.name = Some(name);
                alloc.set_pool(PoolDef::from_crd(&pool).0);
            }
        }
        alloc
            .pool_states()
            .into_iter()
            .filter_map(|p| p.conflict_with.map(|o| format!("{} overlaps {o}", p.name)))
            .collect()
    };
    assert_eq!(
        conflicts(
            "examples/clustermesh/cluster-a.yaml",
            "examples/clustermesh/cluster-b.yaml"
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        conflicts(
            "examples/clustermesh/cluster-a.yaml",
            "examples/clustermesh/broken/cluster-b-same-ip.yaml"
        ),
        vec!["b-clustermesh overlaps a-clustermesh".to_string()]
    );
}

/// Every example applies cleanly (`kubectl apply -f`) to an API server with the CRDs installed:
/// the Services pass the API server's validation and their namespaces exist.
#[test]
fn examples_apply_to_an_api_server() {
    let Some(api) = dev_apiserver() else {
        println!(
            "skipped: `ferrolb dev-apiserver --kubeconfig-out` not available in this build yet"
        );
        return;
    };
    let mut files: Vec<PathBuf> = example_files()
        .into_iter()
        .filter(|f| {
            !f.to_string_lossy().contains("/cilium/")
                && !f.to_string_lossy().contains("examples/migration/metallb/")
        })
        .collect();
    // converted.yaml uses the echo namespace that apps.yaml creates (as in the guide it
    // comes from, where `kubectl create ns echo` comes first).
    files.sort_by_key(|f| f.ends_with("migration/converted.yaml"));
    for f in &files {
        let out = run(Command::new("kubectl")
            .env("KUBECONFIG", &api.kubeconfig)
            .args(["apply", "--validate=false", "-f"])
            .arg(f));
        assert!(
            out.status.success(),
            "kubectl apply -f {} failed:\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The server checks the CRD schema, so the loop above would have caught a bad example.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: ferrolb.io/v1alpha1\nkind: LoadBalancerIPPool\nmetadata:\n  name: bad\nspec:\n  blocks: [{cidr: 198.51.100.0/24}]\n  allowFirstLastIPs: Maybe\n",
    )
    .unwrap();
    let out = run(Command::new("kubectl")
        .env("KUBECONFIG", &api.kubeconfig)
        .args(["apply", "--validate=false", "-f"])
        .arg(&bad));
    assert!(!out.status.success(), "schema violation accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("allowFirstLastIPs"));
    // What was applied is there (read back through the API, by short name too).
    let out = stdout_ok(
        Command::new("kubectl")
            .env("KUBECONFIG", &api.kubeconfig)
            .args(["get", "lbpool", "-o", "name"]),
    );
    for pool in [
        "app-pool",
        "clustermesh",
        "dns",
        "dual",
        "fixed",
        "ingress",
        "v4-only",
    ] {
        assert!(
            out.lines()
                .any(|l| l == format!("loadbalancerippool.ferrolb.io/{pool}")),
            "{pool} missing: {out}"
        );
    }
}

/// Whether this build has `ferrolb plan` (it lands with the ipam work).
fn plan_available() -> bool {
    let help = run(Command::new(BIN).args(["plan", "--help"]));
    String::from_utf8_lossy(&help.stdout).contains("--cluster")
}

fn plan_json(args: &[&str]) -> (Option<i32>, Value) {
    let out = run(Command::new(BIN)
        .arg("plan")
        .args(args)
        .args(["-o", "json"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "plan {args:?}: not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// `ferrolb plan -f ...` gives every example the allocation its README documents, and every
/// allocated Service is announced by the example's policy.
#[test]
fn examples_plan_as_documented() {
    if !plan_available() {
        println!("skipped: `ferrolb plan` not in this build yet (examples_allocate_as_documented checks the allocator)");
        return;
    }
    for (files, expected) in EXAMPLES {
        let mut args = Vec::new();
        for f in *files {
            args.extend(["-f", f]);
        }
        let (code, report) = plan_json(&args);
        assert_eq!(code, Some(0), "{files:?}: {report:#}");
        assert_eq!(report["ok"], true, "{files:?}");
        let services = report["clusters"][0]["services"]
            .as_array()
            .expect("services");
        assert_eq!(services.len(), expected.len(), "{files:?}: {report:#}");
        for (svc, want) in *expected {
            let (ns, name) = svc.split_once('/').unwrap();
            let s = services
                .iter()
                .find(|s| s["namespace"] == ns && s["name"] == name)
                .unwrap_or_else(|| panic!("{files:?}: {svc} not in the plan"));
            match want {
                Ok(ips) => {
                    assert_eq!(s["satisfied"], true, "{files:?} {svc}: {s}");
                    let got: Vec<&str> = s["addresses"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a["ip"].as_str().unwrap())
                        .collect();
                    assert_eq!(&got, ips, "{files:?} {svc}");
                    assert!(
                        s["announcedBy"].as_array().is_some_and(|a| !a.is_empty()),
                        "{files:?} {svc}: no policy announces it: {s}"
                    );
                }
                Err(reason) => {
                    assert_eq!(s["satisfied"], false, "{files:?} {svc}: {s}");
                    assert_eq!(s["reason"], *reason, "{files:?} {svc}: {s}");
                    assert!(s["addresses"].as_array().is_none_or(|a| a.is_empty()));
                }
            }
        }
    }
}

/// `ferrolb plan --cluster`: the two clustermesh clusters don't overlap; the broken pair does
/// (exit 2, the overlap named).
#[test]
fn clustermesh_plan_clusters() {
    if !plan_available() {
        println!("skipped: `ferrolb plan` not in this build yet");
        return;
    }
    let (code, report) = plan_json(&[
        "--cluster",
        "a=examples/clustermesh/cluster-a.yaml",
        "--cluster",
        "b=examples/clustermesh/cluster-b.yaml",
    ]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["crossCluster"].as_array().map(Vec::len), Some(0));
    let (code, report) = plan_json(&[
        "--cluster",
        "a=examples/clustermesh/cluster-a.yaml",
        "--cluster",
        "b=examples/clustermesh/broken/cluster-b-same-ip.yaml",
    ]);
    assert_eq!(code, Some(2), "{report:#}");
    assert_eq!(report["ok"], false);
    let cross = report["crossCluster"].as_array().expect("crossCluster");
    assert_eq!(cross.len(), 1, "{report:#}");
    assert_eq!(cross[0]["clusters"], serde_json::json!(["a", "b"]));
    assert_eq!(
        cross[0]["pools"],
        serde_json::json!(["clustermesh", "clustermesh"])
    );
}

/// Product modules (`crates/ferrolb/src`, top level and one level down, test modules aside), as
/// `parent::child` paths.
fn product_modules() -> BTreeSet<String> {
    let src = root().join("crates/ferrolb/src");
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(&src).expect("crates/ferrolb/src") {
        let p = e.expect("entry").path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            out.insert(name.clone());
            for f in std::fs::read_dir(&p).expect("module dir") {
                let f = f.expect("entry").path();
                let child = f.file_stem().unwrap().to_string_lossy().to_string();
                if child != "mod" && child != "tests" {
                    out.insert(format!("{name}::{child}"));
                }
            }
        } else if name != "lib" {
            out.insert(name);
        }
    }
    out
}

/// ARCHITECTURE.md's module table names every product module, and every module it names exists.
#[test]
fn architecture_md_names_every_product_module_and_nothing_else() {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let section = text
        .split("## Product modules")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a '## Product modules' section");
    let named: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split(" | ").next())
        .flat_map(|cell| {
            cell.split('`')
                .enumerate()
                .filter(|(i, _)| i % 2 == 0)
                .map(|(_, t)| t.trim_matches(|c| c == ',' || c == ' ').to_string())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    let have = product_modules();
    let missing: Vec<_> = have.difference(&named).collect();
    let stale: Vec<_> = named.difference(&have).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "ARCHITECTURE.md does not name {missing:?}; names modules that do not exist: {stale:?}"
    );
}
