//! `ferrolb plan` end to end: the binary on the fixtures in tests/fixtures/plan/ (the seeds'
//! clustermesh setup translated to ferrolb kinds and documentation addresses).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/plan")
        .join(name)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn plan(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolb"))
        .arg("plan")
        .args(args)
        .output()
        .expect("run ferrolb plan");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", r.stdout, r.stderr))
}

fn service<'a>(cluster: &'a Value, ns: &str, name: &str) -> &'a Value {
    cluster["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["namespace"] == ns && s["name"] == name)
        .unwrap_or_else(|| panic!("no Service {ns}/{name} in {cluster}"))
}

fn pool<'a>(cluster: &'a Value, name: &str) -> &'a Value {
    cluster["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no pool {name} in {cluster}"))
}

fn ips(svc: &Value) -> Vec<String> {
    svc["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ip"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn seeds_cluster_a_clustermesh_and_app_pool() {
    let a = fixture("cluster-a.yaml");
    let r = plan(&["-f", a.to_str().unwrap(), "-o", "json"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let v = json(&r);
    assert_eq!(v["ok"], true);
    let c = &v["clusters"][0];
    let mesh = service(c, "kube-system", "clustermesh-apiserver");
    assert_eq!(ips(mesh), ["198.51.100.220"]);
    assert_eq!(mesh["addresses"][0]["pool"], "cluster-pool");
    assert_eq!(mesh["reason"], "Satisfied");
    assert_eq!(mesh["announcedBy"], serde_json::json!(["l2-policy"]));
    let echo = service(c, "echo", "echo");
    assert_eq!(ips(echo), ["198.51.100.230"]);
    assert_eq!(echo["addresses"][0]["pool"], "app-pool");
    let cp = pool(c, "cluster-pool");
    assert_eq!(
        (
            cp["total"].as_i64(),
            cp["used"].as_i64(),
            cp["available"].as_i64()
        ),
        (Some(1), Some(1), Some(0))
    );
    let ap = pool(c, "app-pool");
    assert_eq!(
        (ap["total"].as_i64(), ap["used"].as_i64()),
        (Some(10), Some(1))
    );
    let notes = c["notes"].to_string();
    assert!(
        notes.contains("Deployment echo") && notes.contains("ignored"),
        "{notes}"
    );
}

#[test]
fn table_output_lists_pools_and_services() {
    let a = fixture("cluster-a.yaml");
    let r = plan(&["-f", a.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let line = |needle: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no line starting {needle:?} in\n{}", r.stdout))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line("cluster-pool"),
        ["cluster-pool", "1", "1", "0", "false", "-"]
    );
    assert_eq!(
        line("kube-system/clustermesh-apiserver"),
        [
            "kube-system/clustermesh-apiserver",
            "198.51.100.220",
            "cluster-pool",
            "Satisfied",
            "l2-policy"
        ]
    );
    assert!(r.stdout.contains("no conflicts"));
}

#[test]
fn two_clusters_with_separate_pools_do_not_conflict() {
    let (a, b) = (fixture("cluster-a.yaml"), fixture("cluster-b.yaml"));
    let r = plan(&[
        "--cluster",
        &format!("cluster-a={}", a.display()),
        "--cluster",
        &format!("cluster-b={}", b.display()),
        "-o",
        "json",
    ]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let v = json(&r);
    assert_eq!(v["crossCluster"], serde_json::json!([]));
    assert_eq!(v["clusters"][0]["name"], "cluster-a");
    let b = &v["clusters"][1];
    assert_eq!(b["name"], "cluster-b");
    assert_eq!(
        ips(service(b, "kube-system", "clustermesh-apiserver")),
        ["198.51.100.221"]
    );
    assert_eq!(ips(service(b, "echo", "echo")), ["198.51.100.240"]);
}

#[test]
fn two_clusters_on_one_clustermesh_ip_is_a_conflict() {
    let (a, b) = (fixture("cluster-a.yaml"), fixture("cluster-b-overlap.yaml"));
    let args = [
        "--cluster".to_string(),
        format!("cluster-a={}", a.display()),
        "--cluster".to_string(),
        format!("cluster-b={}", b.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = plan(&args);
    assert_eq!(r.code, Some(2), "{}{}", r.stdout, r.stderr);
    let msg = r
        .stdout
        .lines()
        .find(|l| l.starts_with("CONFLICT between clusters cluster-a and cluster-b"))
        .unwrap_or_else(|| panic!("no conflict line in\n{}", r.stdout));
    assert!(
        msg.contains("pool cluster-pool of cluster cluster-a (198.51.100.220)"),
        "{msg}"
    );
    assert!(
        msg.contains("198.51.100.220 is kube-system/clustermesh-apiserver in cluster-a and kube-system/clustermesh-apiserver in cluster-b"),
        "{msg}"
    );
    let mut json_args = args.clone();
    json_args.extend(["-o", "json"]);
    let r = plan(&json_args);
    assert_eq!(r.code, Some(2));
    let v = json(&r);
    assert_eq!(v["ok"], false);
    assert_eq!(v["conflicts"], 1);
    assert_eq!(
        v["crossCluster"][0]["clusters"],
        serde_json::json!(["cluster-a", "cluster-b"])
    );
    assert_eq!(
        v["crossCluster"][0]["pools"],
        serde_json::json!(["cluster-pool", "cluster-pool"])
    );
}

#[test]
fn existing_status_is_adopted_before_new_allocations() {
    let f = fixture("adopt.yaml");
    let r = plan(&["-f", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let c = &json(&r)["clusters"][0];
    let web = service(c, "shop", "web");
    assert_eq!(ips(web), ["198.51.100.235"]);
    assert_eq!(web["adopted"], serde_json::json!(["198.51.100.235"]));
    // "new" sorts before "web", yet does not take web's address.
    assert_eq!(ips(service(c, "shop", "new")), ["198.51.100.230"]);
    // An address in no pool is kept too (an address never changes under a Service unless the
    // user asks), and reported as not covered.
    let stale = service(c, "shop", "stale");
    assert_eq!(ips(stale), ["203.0.113.9"]);
    assert_eq!(stale["adopted"], serde_json::json!(["203.0.113.9"]));
    assert_eq!(stale["notCovered"][0]["ip"], "203.0.113.9");
    assert!(
        stale["notCovered"][0]["why"]
            .as_str()
            .unwrap()
            .contains("in no pool"),
        "{stale}"
    );
}

#[test]
fn overlapping_pools_in_one_cluster_exit_non_zero_with_reasons() {
    let f = fixture("overlap-in-cluster.yaml");
    let r = plan(&["-f", f.to_str().unwrap()]);
    assert_eq!(r.code, Some(2), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("CONFLICT pool second: spec.blocks[0] (198.51.100.8-198.51.100.15) overlaps spec.blocks[0] (198.51.100.0-198.51.100.15) of the older pool first"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("INVALID pool second: spec.blocks[2].cidr"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("UNSATISFIED default/requested: NoPool: pool second containing requested 198.51.100.70 conflicts with an older pool"),
        "{}",
        r.stdout
    );
}

#[test]
fn cilium_class_is_skipped_unless_served() {
    let f = fixture("cilium-class.yaml");
    let r = plan(&["-f", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let c = &json(&r)["clusters"][0];
    assert_eq!(c["services"], serde_json::json!([]));
    let notes = c["notes"].to_string();
    assert!(
        notes.contains(
            "Service echo/echo skipped: loadBalancerClass io.cilium/l2-announcer is not served"
        ),
        "{notes}"
    );
    assert!(
        notes.contains("CiliumLoadBalancerIPPool cluster-pool ignored")
            && notes.contains("ferrolb convert"),
        "{notes}"
    );
    let r = plan(&[
        "-f",
        f.to_str().unwrap(),
        "-o",
        "json",
        "--serve-cilium-class",
    ]);
    let c = &json(&r)["clusters"][0];
    assert_eq!(ips(service(c, "echo", "echo")), ["198.51.100.230"]);
}

#[test]
fn unreadable_input_is_a_clear_error() {
    let f = fixture("broken.yaml");
    let r = plan(&["-f", f.to_str().unwrap()]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .contains("broken.yaml: document 2 is not valid YAML"),
        "{}",
        r.stderr
    );
    let r = plan(&["--cluster", "nofile"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("expected NAME=FILE"), "{}", r.stderr);
    let r = plan(&[]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("nothing to plan"), "{}", r.stderr);
}

#[test]
fn directory_input_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("cluster-a.yaml"), dir.path().join("a.yaml")).unwrap();
    std::fs::write(dir.path().join("README.md"), "not a manifest").unwrap();
    let r = plan(&["-f", dir.path().to_str().unwrap(), "-o", "json"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert_eq!(
        ips(service(&json(&r)["clusters"][0], "echo", "echo")),
        ["198.51.100.230"]
    );

    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrolb"))
        .args(["plan", "-f", "-", "-o", "json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            std::fs::read_to_string(fixture("cluster-b.yaml"))
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        ips(service(
            &v["clusters"][0],
            "kube-system",
            "clustermesh-apiserver"
        )),
        ["198.51.100.221"]
    );
}

#[test]
fn metallb_manifests_are_planned_directly() {
    let f = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/convert/metallb.yaml");
    let r = plan(&["-f", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let c = &json(&r)["clusters"][0];
    // MetalLB annotations honoured without a flag: the input holds MetalLB objects.
    assert_eq!(ips(service(c, "team-a", "dns-udp")), ["198.51.100.20"]);
    assert_eq!(ips(service(c, "team-a", "dns-tcp")), ["198.51.100.20"]);
    let db = service(c, "team-b", "db");
    assert_eq!(ips(db), ["203.0.113.10"]);
    assert_eq!(db["addresses"][0]["pool"], "manual");
    assert_eq!(ips(service(c, "team-b", "web")), ["192.0.2.0"]);
    // What did not convert is listed in the notes, one line each (only the BGPPeer).
    let notes: Vec<&str> = c["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert_eq!(
        notes.iter().filter(|n| n.contains("unconvertible")).count(),
        1,
        "{notes:?}"
    );
    // The advertisements became policies, by the agent's own rule: l2 (every pool) announces
    // every Service, l2-manual (ipAddressPools: [manual] → pools) only the manual pool's.
    assert_eq!(
        service(c, "team-b", "web")["announcedBy"],
        serde_json::json!(["l2-1", "l2-2"])
    );
    assert_eq!(
        db["announcedBy"],
        serde_json::json!(["l2-1", "l2-2", "l2-manual"])
    );
    let policies = c["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 3);
    assert!(policies
        .iter()
        .all(|p| p["problems"].as_array().unwrap().is_empty()));
    assert!(notes.iter().any(|n| n.contains("BGPPeer/tor")), "{notes:?}");
    let pools = c["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 4);
    assert!(pools
        .iter()
        .any(|p| p["name"] == "team-a" && p["priority"] == 10));
}

/// With Nodes in the input, each Service's announcer candidates are shown in preference tiers
/// (the agents' own computation), and a policy limited to another pool adds no node.
#[test]
fn nodes_in_the_input_show_announcers_in_preference_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cluster.yaml");
    std::fs::write(
        &f,
        r#"apiVersion: ferrolb.io/v1alpha1
kind: LoadBalancerIPPool
metadata: {name: web}
spec: {blocks: [{cidr: 198.51.100.0/28}]}
---
apiVersion: ferrolb.io/v1alpha1
kind: LoadBalancerIPPool
metadata: {name: db, labels: {tier: db}}
spec: {blocks: [{cidr: 198.51.100.16/28}], autoAssign: false}
---
apiVersion: ferrolb.io/v1alpha1
kind: L2AnnouncementPolicy
metadata: {name: edge}
spec:
  pools: [web]
  nodeSelector: {matchLabels: {role: edge}}
  preferredNodes: [{weight: 50, nodeSelector: {matchLabels: {zone: a}}}]
---
apiVersion: ferrolb.io/v1alpha1
kind: L2AnnouncementPolicy
metadata: {name: db-gw}
spec:
  poolSelector: {matchLabels: {tier: db}}
  nodeSelector: {matchLabels: {role: db}}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {role: edge, zone: b}}
---
apiVersion: v1
kind: Node
metadata: {name: n2, labels: {role: edge, zone: a}}
---
apiVersion: v1
kind: Node
metadata: {name: n3, labels: {role: edge, zone: b}}
---
apiVersion: v1
kind: Node
metadata: {name: n4, labels: {role: db, zone: a}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {type: LoadBalancer, ports: [{port: 80}]}
"#,
    )
    .unwrap();
    let r = plan(&["-f", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let c = &json(&r)["clusters"][0];
    let web = service(c, "default", "web");
    assert_eq!(ips(web), ["198.51.100.1"]);
    assert_eq!(web["announcedBy"], serde_json::json!(["edge"]));
    assert_eq!(
        web["announcers"],
        serde_json::json!([["n2"], ["n1", "n3"]]),
        "preferred n2 first, the other edge nodes as fallbacks, never db-gw's n4"
    );
    let table = plan(&["-f", f.to_str().unwrap()]).stdout;
    assert!(table.contains("n2 > n1,n3"), "{table}");
}
