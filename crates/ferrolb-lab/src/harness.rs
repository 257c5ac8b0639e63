//! The one test harness: helpers to run real ferrolb processes in network namespaces and look
//! at them from outside, used by every root test and by the lab. Nothing here is `cfg(test)`.
//!
//! - [`Proc`] (the lab's): a child process (`ip netns exec NS setpriv --pdeathsig KILL ferrolb
//!   ...`) with its log in a file (read whole or line by line), lines for its stdin, killed
//!   (SIGKILL) and reaped on drop, so a failing test leaves nothing running.
//! - [`wait_until`] (and [`try_wait_until`], [`wait_until_async`], from [`crate::wait`]):
//!   poll-with-deadline for conditions that have no event to await.
//! - [`ApiHttp`]: plain REST calls to an API server reachable only from inside a namespace
//!   (curl runs in that namespace).
//! - [`arping_macs`], [`ndisc6_macs`], [`answering_macs`], [`wait_answering_macs`],
//!   [`neighbour`] (over the lab's [`run_arping`], [`run_ndisc6`] and parsers): what the
//!   kernel's own tools see.
//! - [`metric`]: a value out of Prometheus text.
//! - [`TestCluster`]: a whole test segment — the API stand-in (`ferrolb dev-apiserver` at
//!   [`API_ADDR`]) with the ferrolb CRDs, Node objects, node namespaces running agents and a
//!   client namespace — with helpers to create Services/policies and to look from the client.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::lab::topo::Topology;
use crate::netns::Netns;
use serde_json::json;

/// The one poll-with-deadline (sync, fallible, async).
pub use crate::wait::{try_wait_until, wait_until, wait_until_async};

/// A process running inside a namespace, killed on drop (the lab's [`crate::lab::procs::Proc`]),
/// and the log name a new one gets.
pub use crate::lab::procs::{numbered_log, Proc};

/// Runs `curl` inside `ns`: returns (HTTP status, body).
pub fn curl(
    ns: &Netns,
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut cmd = ns.cmd("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        "-H",
        "Accept: application/json",
    ]);
    if let Some(ct) = content_type {
        cmd.args(["-H", &format!("Content-Type: {ct}")]);
    }
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("spawning curl")?;
    if let Some(b) = body {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b.as_bytes())?;
        }
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "curl {method} {url} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let code: u16 = code
        .trim()
        .parse()
        .with_context(|| format!("curl status code {code:?}"))?;
    Ok((code, body.to_string()))
}

/// REST calls to an API server from inside a namespace (the server may listen on a segment
/// address the host cannot reach).
#[derive(Debug, Clone, Copy)]
pub struct ApiHttp<'a> {
    pub ns: &'a Netns,
    pub base: &'a str,
}

impl ApiHttp<'_> {
    fn call(
        &self,
        method: &str,
        path: &str,
        ct: Option<&str>,
        body: Option<&serde_json::Value>,
        ok: &[u16],
    ) -> anyhow::Result<serde_json::Value> {
        let body = body.map(serde_json::Value::to_string);
        let (code, text) = curl(
            self.ns,
            method,
            &format!("{}{path}", self.base),
            ct,
            body.as_deref(),
        )?;
        if !ok.contains(&code) {
            bail!("{method} {path} → {code}: {text}");
        }
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))
    }

    /// GET → JSON.
    pub fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call("GET", path, None, None, &[200])
    }

    /// POST (create) → the created object.
    pub fn create(&self, path: &str, obj: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.call(
            "POST",
            path,
            Some("application/json"),
            Some(obj),
            &[200, 201],
        )
    }

    /// JSON merge patch.
    pub fn merge_patch(
        &self,
        path: &str,
        patch: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.call(
            "PATCH",
            path,
            Some("application/merge-patch+json"),
            Some(patch),
            &[200],
        )
    }

    /// DELETE.
    pub fn delete(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call("DELETE", path, None, None, &[200, 202])
    }

    /// Raw text of a path (e.g. `/metrics`).
    pub fn text(&self, path: &str) -> anyhow::Result<String> {
        let (code, text) = curl(self.ns, "GET", &format!("{}{path}", self.base), None, None)?;
        if code != 200 {
            bail!("GET {path} → {code}: {text}");
        }
        Ok(text)
    }
}

pub use crate::lab::probe::{
    answering_macs, neighbour, norm_mac, parse_neighbour, run_arping, run_ndisc6, ArpReply,
};

/// Parses iputils `arping` output: the MACs of the replies (unicast and broadcast ones).
pub fn parse_arping(out: &str) -> BTreeSet<String> {
    crate::lab::probe::parse_arping(out)
        .into_iter()
        .map(|r| r.mac)
        .collect()
}

/// Every reply in iputils `arping` output, in order (the lab's parser).
pub use crate::lab::probe::parse_arping as arping_replies;

/// `arping -b -c COUNT -w DEADLINE -I IFACE IP` in `ns` (always broadcast, so every station that
/// answers is seen on every probe): the MACs that replied.
pub fn arping_macs(
    ns: &Netns,
    iface: &str,
    ip: &str,
    count: u32,
) -> anyhow::Result<BTreeSet<String>> {
    Ok(parse_arping(&run_arping(
        ns,
        iface,
        ip,
        count,
        count + 1,
        true,
    )?))
}

/// The distinct MACs answering `ip` from the client's eth0 ([`answering_macs`], 3 requests a
/// look), once any answers: looks again at once until then, up to `within` (then empty).
pub fn wait_answering_macs(client: &Netns, ip: std::net::IpAddr, within: Duration) -> Vec<String> {
    wait_until(
        &format!("an answer for {ip}"),
        within,
        Duration::ZERO,
        || {
            let macs = answering_macs(client, ip, 3);
            (!macs.is_empty()).then_some(macs)
        },
    )
    .unwrap_or_default()
}

/// `ndisc6 -m -n -r ATTEMPTS -w 1000 IP IFACE` in `ns`: MACs in the Neighbor Advertisements.
pub fn ndisc6_macs(
    ns: &Netns,
    iface: &str,
    ip: &str,
    attempts: u32,
) -> anyhow::Result<BTreeSet<String>> {
    Ok(run_ndisc6(ns, iface, ip, attempts, 1000)?
        .into_iter()
        .collect())
}

/// The value of the sample `name{labels...}` in Prometheus text, where every `label="value"` in
/// `labels` appears in the sample's label set; summed over matching samples.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    crate::lab::probe::prom_samples(text, name)
        .into_iter()
        .filter(|(have, _)| {
            labels
                .iter()
                .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .reduce(|a, b| a + b)
}

/// Arguments of `ferrolb agent` for a test/lab node.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub node_name: String,
    pub kubeconfig: PathBuf,
    pub lease_namespace: String,
    pub metrics_addr: String,
    pub lease_duration: String,
    pub renew_deadline: String,
    pub retry_period: String,
    pub extra: Vec<String>,
}

impl AgentSpec {
    /// Fast timings for tests: 2 s lease, 1.5 s renew deadline, 500 ms retry.
    pub fn new(node: &str, kubeconfig: &Path, metrics_addr: &str) -> Self {
        AgentSpec {
            node_name: node.to_string(),
            kubeconfig: kubeconfig.to_path_buf(),
            lease_namespace: "ferrolb-system".into(),
            metrics_addr: metrics_addr.to_string(),
            lease_duration: "2s".into(),
            renew_deadline: "1500ms".into(),
            retry_period: "500ms".into(),
            extra: vec![],
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut v: Vec<String> = [
            "--log-json",
            "--log-level",
            "info,ferrolb=debug",
            "agent",
            "--node-name",
            &self.node_name,
            "--kubeconfig",
            &self.kubeconfig.to_string_lossy(),
            "--lease-namespace",
            &self.lease_namespace,
            "--metrics-addr",
            &self.metrics_addr,
            "--lease-duration",
            &self.lease_duration,
            "--renew-deadline",
            &self.renew_deadline,
            "--retry-period",
            &self.retry_period,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(self.extra.iter().cloned());
        v
    }

    /// Spawns the agent in `ns`, logging to `dir/<node>.log`.
    pub fn spawn(&self, ns: &Netns, bin: &Path, dir: &Path) -> anyhow::Result<Proc> {
        Proc::spawn(
            &self.node_name,
            Some(ns),
            bin,
            &self.args(),
            &[],
            &dir.join(format!("{}.log", self.node_name)),
        )
    }
}

/// Where [`TestCluster`] runs the API stand-in (its own namespace on the segment).
pub const API_ADDR: &str = "192.0.2.254:6443";
/// URL of the API stand-in, as the nodes reach it.
pub const API_URL: &str = "http://192.0.2.254:6443";

/// One L2 segment: the API stand-in, node namespaces running agents, a client.
pub struct TestCluster {
    // Field order = drop order: processes first, then namespaces, then the log directory.
    pub agents: BTreeMap<String, Proc>,
    pub api_proc: Proc,
    /// The segment: the lab's topology (api 192.0.2.254, client 192.0.2.100, node i at
    /// 192.0.2.(11+i)).
    pub topo: Topology,
    /// Node name → index in `topo.nodes`.
    pub node_i: BTreeMap<String, usize>,
    /// Node name → MAC of its `eth0`.
    pub macs: BTreeMap<String, String>,
    /// The ferrolb binary.
    pub bin: PathBuf,
    /// Logs and kubeconfigs.
    pub dir: PathBuf,
}

impl TestCluster {
    /// `nodes`: (name, labels), on the lab's [`Topology`]: node i gets 192.0.2.(11+i)/24 and
    /// 2001:db8:1::(11+i)/64 (with the lab's arp_ignore/arp_announce settings).
    pub fn new(
        bin: &Path,
        dir: &Path,
        tag: &str,
        nodes: &[(&str, &[(&str, &str)])],
    ) -> anyhow::Result<TestCluster> {
        crate::netns::cleanup_stale();
        let dir = dir.to_path_buf();
        let topo = Topology::build(tag, nodes.len())?;
        let node_i: BTreeMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.to_string(), i))
            .collect();
        let macs = nodes
            .iter()
            .zip(&topo.nodes)
            .map(|((name, _), n)| (name.to_string(), n.mac.clone()))
            .collect();

        let api_proc = Proc::spawn(
            "apiserver",
            Some(topo.api()),
            bin,
            &[
                "dev-apiserver".to_string(),
                "--listen".to_string(),
                API_ADDR.to_string(),
            ],
            &[],
            &dir.join("apiserver.log"),
        )?;
        let c = TestCluster {
            agents: BTreeMap::new(),
            api_proc,
            topo,
            node_i,
            macs,
            bin: bin.to_path_buf(),
            dir,
        };
        let api = c.api();
        wait_until(
            "the API stand-in to answer",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || api.get("/version").ok(),
        )?;
        for (_, crd) in ferrolb::crds::all() {
            api.create(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                &serde_json::to_value(&crd)?,
            )?;
        }
        wait_until(
            "the ferrolb CRDs to be served",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                api.get("/apis/ferrolb.io/v1alpha1/l2announcementpolicies")
                    .ok()
            },
        )?;
        api.create(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ferrolb-system"}}),
        )?;
        for (name, labels) in nodes {
            let labels: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            api.create(
                "/api/v1/nodes",
                &json!({"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": name, "labels": labels}}),
            )?;
            api.merge_patch(
                &format!("/api/v1/nodes/{name}/status"),
                &json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                        "reason": "KubeletReady", "message": "test node"}]}}),
            )?;
        }
        Ok(c)
    }

    pub fn api(&self) -> ApiHttp<'_> {
        ApiHttp {
            ns: self.topo.api(),
            base: API_URL,
        }
    }

    pub fn client(&self) -> &Netns {
        self.topo.client()
    }

    pub fn node_ns(&self, node: &str) -> &Netns {
        self.topo.node_ns(self.node_i[node])
    }

    pub fn node_addr(&self, node: &str) -> String {
        self.topo.nodes[self.node_i[node]].ipv4.to_string()
    }

    pub fn kubeconfig(&self, identity: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{identity}.kubeconfig"));
        std::fs::write(
            &path,
            kube_standin::ApiServer::kubeconfig(API_URL, identity),
        )?;
        Ok(path)
    }

    /// Starts the agent of `node` and waits until it is ready (caches synced).
    pub fn start_agent(&mut self, node: &str, extra: &[&str]) -> anyhow::Result<()> {
        let mut spec = AgentSpec::new(
            node,
            &self.kubeconfig(node)?,
            &format!("{}:9464", self.node_addr(node)),
        );
        spec.extra = extra.iter().map(|s| s.to_string()).collect();
        let mut p = spec.spawn(self.node_ns(node), &self.bin, &self.dir)?;
        p.wait_log("agent ready", Duration::from_secs(30))?;
        self.agents.insert(node.to_string(), p);
        Ok(())
    }

    pub fn agent_metrics(&self, node: &str) -> anyhow::Result<String> {
        self.agent_http(node, "/metrics")
    }

    /// GET a path of the agent's metrics/health endpoint (200 only).
    pub fn agent_http(&self, node: &str, path: &str) -> anyhow::Result<String> {
        ApiHttp {
            ns: self.node_ns(node),
            base: &format!("http://{}:9464", self.node_addr(node)),
        }
        .text(path)
    }

    /// A LoadBalancer Service with its status already set (no controller in these tests).
    pub fn service(&self, name: &str, ips: &[&str]) -> anyhow::Result<()> {
        self.service_with(name, ips, json!({}))
    }

    /// Same, with extra `spec` fields merged in.
    pub fn service_with(
        &self,
        name: &str,
        ips: &[&str],
        extra_spec: serde_json::Value,
    ) -> anyhow::Result<()> {
        let api = self.api();
        let mut spec = json!({"type": "LoadBalancer", "selector": {"app": name},
                              "ports": [{"port": 80, "protocol": "TCP"}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
            s.extend(e.clone());
        }
        api.create(
            "/api/v1/namespaces/default/services",
            &json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
                    "spec": spec}),
        )?;
        let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        api.merge_patch(
            &format!("/api/v1/namespaces/default/services/{name}/status"),
            &json!({"status": {"loadBalancer": {"ingress": ingress}}}),
        )?;
        Ok(())
    }

    pub fn policy(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        self.api().create(
            "/apis/ferrolb.io/v1alpha1/l2announcementpolicies",
            &json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "L2AnnouncementPolicy",
                    "metadata": {"name": name}, "spec": spec}),
        )?;
        Ok(())
    }

    pub fn node_of_mac(&self, mac: &str) -> Option<String> {
        self.macs
            .iter()
            .find(|(_, m)| m.as_str() == mac)
            .map(|(n, _)| n.clone())
    }

    /// arping from the client until someone answers; returns the answering MACs.
    pub fn wait_arp_answer(&self, ip: &str, timeout: Duration) -> anyhow::Result<BTreeSet<String>> {
        wait_until(
            &format!("an ARP reply for {ip}"),
            timeout,
            Duration::from_millis(10),
            || {
                let m = arping_macs(self.client(), "eth0", ip, 1).ok()?;
                (!m.is_empty()).then_some(m)
            },
        )
    }

    /// The client's neighbour entry MAC for `ip`.
    pub fn client_neighbour(&self, ip: &str) -> Option<String> {
        neighbour(self.client(), "eth0", ip).map(|(mac, _)| mac)
    }

    /// Makes the client's kernel resolve `ip` (the ping itself gets no answer: the VIP is not on
    /// any node's interface, only the ARP/NDP responder knows it).
    pub fn client_resolve(&self, ip: &str) {
        let _ = self
            .client()
            .cmd("ping")
            .args(["-c", "1", "-W", "1", ip])
            .output();
    }

    pub fn api_requests(&self, verb: &str, resource: &str) -> anyhow::Result<f64> {
        let text = self.api().text("/metrics")?;
        Ok(metric(
            &text,
            "ferrolb_apiserver_requests_total",
            &[("verb", verb), ("resource", resource)],
        )
        .unwrap_or(0.0))
    }

    /// The address leases (presence leases of the nodes left out).
    pub fn leases(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let l = self
            .api()
            .get("/apis/coordination.k8s.io/v1/namespaces/ferrolb-system/leases")?;
        Ok(l["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            // Address leases only: not presence leases, not the published interface prefixes.
            .filter(|l| {
                let role = &l["metadata"]["labels"][ferrolb::lease::LABEL_ROLE];
                role != ferrolb::lease::ROLE_PRESENCE
                    && role != ferrolb::agent::subnets::ROLE_INTERFACES
            })
            .collect())
    }

    /// API requests of one client identity (a node's agent uses its node name).
    pub fn api_requests_of(&self, client: &str, verb: &str, resource: &str) -> anyhow::Result<f64> {
        let text = self.api().text("/metrics")?;
        Ok(metric(
            &text,
            "ferrolb_apiserver_requests_total",
            &[("client", client), ("verb", verb), ("resource", resource)],
        )
        .unwrap_or(0.0))
    }

    pub fn dump_logs(&self) -> String {
        let mut s = String::new();
        for (n, p) in &self.agents {
            s.push_str(&format!("===== {n}\n{}\n", tail(&p.log_text(), 60)));
        }
        s.push_str(&format!(
            "===== apiserver\n{}\n",
            tail(&self.api_proc.log_text(), 30)
        ));
        s
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a scenario and prints the processes' logs when it fails.
pub fn scenario(
    c: &mut TestCluster,
    f: impl FnOnce(&mut TestCluster) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let r = f(c);
    if r.is_err() {
        eprintln!("{}", c.dump_logs());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arping_output() {
        let out = "ARPING 198.51.100.10 from 192.0.2.100 eth0\n\
                   Unicast reply from 198.51.100.10 [3A:1B:2C:4D:5E:6F]  0.723ms\n\
                   Broadcast reply from 198.51.100.10 [3a:1b:2c:4d:5e:70]  0.9ms\n\
                   Sent 3 probes (3 broadcast(s))\nReceived 2 response(s)\n";
        assert_eq!(
            parse_arping(out),
            BTreeSet::from([
                "3a:1b:2c:4d:5e:6f".to_string(),
                "3a:1b:2c:4d:5e:70".to_string()
            ])
        );
        assert!(parse_arping("Sent 3 probes\nReceived 0 response(s)\n").is_empty());
    }

    #[test]
    fn metric_values() {
        let text = "# HELP x y\n# TYPE x counter\n\
                    ferrolb_apiserver_requests_total{client=\"n1\",code=\"200\",resource=\"leases\",verb=\"update\"} 7\n\
                    ferrolb_apiserver_requests_total{client=\"n2\",code=\"200\",resource=\"leases\",verb=\"update\"} 3\n\
                    ferrolb_apiserver_requests_total{client=\"n2\",code=\"200\",resource=\"services\",verb=\"get\"} 1\n\
                    ferrolb_agent_leases_held 2\n";
        assert_eq!(
            metric(
                text,
                "ferrolb_apiserver_requests_total",
                &[("resource", "leases"), ("verb", "update")]
            ),
            Some(10.0)
        );
        assert_eq!(
            metric(
                text,
                "ferrolb_apiserver_requests_total",
                &[("resource", "leases"), ("verb", "get")]
            ),
            None
        );
        assert_eq!(metric(text, "ferrolb_agent_leases_held", &[]), Some(2.0));
        assert_eq!(metric(text, "ferrolb_agent_leases", &[]), None);
    }
}
