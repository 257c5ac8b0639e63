//! `ferrolb convert`: Cilium LB-IPAM / L2 announcement manifests and MetalLB (L2) ones to
//! ferrolb ones. MetalLB `IPAddressPool`s and Service annotations are converted here,
//! `L2Advertisement`s in [`metallb_l2`] (see its table).
//!
//! Reads multi-document YAML (or JSON, or a `kind: List`) and writes the converted objects to
//! stdout (`-o yaml`, the default, or `-o json` as a `v1` `List`). Everything that could not be
//! converted faithfully is reported on stderr, one line per finding, and then the exit code is 2;
//! nothing is dropped silently.
//!
//! | Cilium | ferrolb |
//! |---|---|
//! | `CiliumLoadBalancerIPPool` (`cilium.io/v2`, `v2alpha1`; `spec.blocks` or the older `spec.cidrs`) | `LoadBalancerIPPool` (`ferrolb.io/v1alpha1`) |
//! | `CiliumL2AnnouncementPolicy` (`cilium.io/v2alpha1`, `v2`) | `L2AnnouncementPolicy` |
//! | Service annotation `lbipam.cilium.io/ips` (`io.cilium/lb-ipam-ips`) | `ferrolb.io/ips` |
//! | `lbipam.cilium.io/sharing-key` (`io.cilium/lb-ipam-sharing-key`) | `ferrolb.io/sharing-key` |
//! | `lbipam.cilium.io/sharing-cross-namespace` (`io.cilium/lb-ipam-sharing-cross-namespace`) | `ferrolb.io/sharing-cross-namespace` |
//! | `spec.loadBalancerClass: io.cilium/l2-announcer` | `ferrolb.io/l2-announcer` |
//!
//! Decisions:
//! - The Cilium LB-IPAM annotations are *rewritten* (removed, ours added) so one Service never
//!   carries two possibly diverging requests; every other annotation, `service.cilium.io/*`
//!   included, is kept untouched. When both forms are present with different values, ours wins
//!   and the difference is reported.
//! - Defaults differ and are written out explicitly: Cilium treats an unset `allowFirstLastIPs`
//!   as `Yes` (ours defaults to `No`), and an unset `loadBalancerIPs` of a policy as `false`
//!   (ours defaults to `true`).
//! - Cilium matches interface regexes unanchored (Go `MatchString`); ours are anchored, so an
//!   expression without both `^` and `$` is widened to keep its meaning (`^eth[0-9]+` ->
//!   `^eth[0-9]+.*$`, `ens` -> `^.*ens.*$`).
//! - Server-populated metadata (`uid`, `resourceVersion`, `creationTimestamp`, `generation`,
//!   `managedFields`) and `status` of converted custom resources are dropped (they belong to the
//!   Cilium object). Services keep their status: `ferrolb plan` and the controller re-adopt
//!   `status.loadBalancer.ingress`.
//! - Other Cilium kinds (BGP, CiliumNetworkPolicy, ...) are reported as unconvertible and left
//!   out of the output; non-Cilium objects pass through unchanged.
//!
//! Changing `spec.loadBalancerClass` of an existing Service is refused by the API server (the
//! field is immutable once set), so converted Services with a class must be recreated — the
//! converter says so as a warning.

use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use ferrolb::api;

mod metallb_l2;

/// Command-line flags of this subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Manifest files (multi-document YAML or JSON); `-` reads stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Yaml)]
    pub output: Output,
}

/// Output format of `ferrolb convert`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Multi-document YAML (`---` separated).
    Yaml,
    /// One JSON `v1` `List` holding every object.
    Json,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Converted, but something changed that the user should know about.
    Warning,
    /// Could not be converted faithfully (dropped or left as is): exit code 2.
    Unconvertible,
}

/// One finding of the conversion, naming the object and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// `FILE#DOC KIND/NAME`.
    pub object: String,
    /// JSON path-like field name (`spec.blocks[0].cidr`), empty for the whole object.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Unconvertible => "unconvertible",
        };
        if self.field.is_empty() {
            write!(f, "{sev}: {}: {}", self.object, self.message)
        } else {
            write!(
                f,
                "{sev}: {}: {}: {}",
                self.object, self.field, self.message
            )
        }
    }
}

/// Result of converting a set of documents.
#[derive(Debug, Clone, Default)]
pub struct Conversion {
    /// Output objects, in input order.
    pub objects: Vec<Value>,
    pub findings: Vec<Finding>,
    /// MetalLB `IPAddressPool`s seen so far (name, labels): what an `L2Advertisement`'s pool
    /// selection is resolved against.
    pub metallb_pools: Vec<(String, std::collections::BTreeMap<String, String>)>,
}

impl Conversion {
    /// Whether anything could not be converted (exit code 2).
    pub fn has_unconvertible(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::Unconvertible)
    }
}

/// Splits a multi-document YAML (or JSON) text into values; `kind: List` documents are
/// flattened into their items; empty documents are skipped.
pub fn parse_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc)
            .map_err(|e| anyhow::anyhow!("document {}: not valid YAML: {e}", i + 1))?;
        match v {
            Value::Null => {}
            Value::Object(ref m)
                if m.get("kind").and_then(Value::as_str) == Some("List")
                    && m.get("items").is_some_and(Value::is_array) =>
            {
                if let Some(Value::Array(items)) = m.get("items") {
                    out.extend(items.iter().cloned());
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Converts the documents of one source (`source` names it in findings).
pub fn convert_documents(source: &str, docs: Vec<Value>, conv: &mut Conversion) {
    note_metallb_pools(&docs, conv);
    for (i, doc) in docs.into_iter().enumerate() {
        let Value::Object(obj) = doc else {
            conv.findings.push(Finding {
                severity: Severity::Unconvertible,
                object: format!("{source}#{}", i + 1),
                field: String::new(),
                message: "not a Kubernetes object (expected a mapping); left out".into(),
            });
            continue;
        };
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = obj
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>");
        let mut cx = Cx {
            object: format!("{source}#{} {kind}/{name}", i + 1),
            findings: &mut conv.findings,
        };
        let group = api_version.split('/').next().unwrap_or("");
        match (group, kind.as_str()) {
            ("cilium.io", "CiliumLoadBalancerIPPool") => {
                conv.objects.push(convert_pool(obj, &mut cx));
            }
            ("cilium.io", "CiliumL2AnnouncementPolicy") => {
                conv.objects.push(convert_policy(obj, &mut cx));
            }
            ("cilium.io", _) => cx.push(
                Severity::Unconvertible,
                "",
                format!(
                    "{api_version} {kind} has no ferrolb equivalent (only LB-IPAM pools and L2 \
                     announcement policies convert); left out"
                ),
            ),
            ("metallb.io", "IPAddressPool") => {
                conv.objects.push(convert_metallb_pool(obj, &mut cx));
            }
            ("metallb.io", "L2Advertisement") => {
                let policies = metallb_l2::convert(obj, &conv.metallb_pools, &mut cx);
                conv.objects.extend(policies);
            }
            ("metallb.io", _) => cx.push(
                Severity::Unconvertible,
                "",
                format!(
                    "{api_version} {kind} has no ferrolb equivalent (ferrolb does not speak BGP; \
                     only IPAddressPools and L2Advertisements convert); left out"
                ),
            ),
            ("v1", "Service") if api_version == "v1" => {
                conv.objects.push(convert_service(obj, &mut cx));
            }
            _ => conv.objects.push(Value::Object(obj)),
        }
    }
}

/// Remembers the MetalLB `IPAddressPool`s among `docs` (for `L2Advertisement`s, whichever
/// document comes first).
fn note_metallb_pools(docs: &[Value], conv: &mut Conversion) {
    for p in metallb_l2::pools_of(docs) {
        if !conv.metallb_pools.iter().any(|(n, _)| *n == p.0) {
            conv.metallb_pools.push(p);
        }
    }
}

/// Reads and converts the given files (`-` = stdin).
pub fn convert_files(files: &[PathBuf]) -> anyhow::Result<Conversion> {
    let mut conv = Conversion::default();
    let mut sources = Vec::new();
    for f in files {
        let (name, text) = if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            ("<stdin>".to_string(), s)
        } else {
            let s = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
            (f.display().to_string(), s)
        };
        let docs = parse_documents(&text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        // Every file's pools first: an advertisement may come before its pools.
        note_metallb_pools(&docs, &mut conv);
        sources.push((name, docs));
    }
    for (name, docs) in sources {
        convert_documents(&name, docs, &mut conv);
    }
    Ok(conv)
}

/// Renders converted objects.
pub fn render(objects: &[Value], output: Output) -> anyhow::Result<String> {
    match output {
        Output::Yaml => {
            let mut s = String::new();
            for o in objects {
                s.push_str("---\n");
                s.push_str(&to_yaml(o));
            }
            Ok(s)
        }
        Output::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
            Ok(serde_json::to_string_pretty(&list)? + "\n")
        }
    }
}

/// Runs the subcommand: converted objects on stdout, findings on stderr, exit code 2 when
/// anything could not be converted.
pub async fn run(args: Args) -> ferrolb::CmdResult {
    let conv = convert_files(&args.files)?;
    let text = render(&conv.objects, args.output)?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        // A closed pipe ends the output quietly.
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
    for f in &conv.findings {
        eprintln!("{f}");
    }
    if conv.has_unconvertible() {
        let n = conv
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Unconvertible)
            .count();
        eprintln!("ferrolb convert: {n} item(s) could not be converted (see above)");
        return Ok(std::process::ExitCode::from(2));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Block-style YAML that reads back the same under YAML 1.1 *and* 1.2.
///
/// serde_yaml writes YAML 1.2 and leaves `Yes`, `No`, `on`, `off`, `y`, `n` unquoted, which
/// kubectl's YAML decoder (YAML 1.1 rules) turns into booleans: `allowFirstLastIPs: No` would
/// reach the API server as `false`. Here every string that is not plainly safe is quoted.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => emit_map(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => emit_seq(a, 0, &mut out),
        other => {
            out.push_str(&scalar(other, 0));
            out.push('\n');
        }
    }
    out
}

fn emit_map(m: &Map<String, Value>, indent: usize, out: &mut String) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&yaml_key(k));
        out.push(':');
        emit_value(v, indent, out);
    }
}

fn emit_seq(a: &[Value], indent: usize, out: &mut String) {
    for v in a {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match v {
            Value::Object(m) if !m.is_empty() => {
                // First key on the dash line, the rest aligned under it.
                let mut first = true;
                for (k, val) in m {
                    if first {
                        out.push(' ');
                        first = false;
                    } else {
                        out.push_str(&" ".repeat(indent + 2));
                    }
                    out.push_str(&yaml_key(k));
                    out.push(':');
                    emit_value(val, indent + 2, out);
                }
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                emit_seq(inner, indent + 2, out);
            }
            other => {
                out.push(' ');
                out.push_str(&scalar(other, indent + 2));
                out.push('\n');
            }
        }
    }
}

/// Writes what follows `key:` (a scalar on the same line, or a nested block).
fn emit_value(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            emit_map(m, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            emit_seq(a, indent, out);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other, indent + 2));
            out.push('\n');
        }
    }
}

fn scalar(v: &Value, indent: usize) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => yaml_str(s, indent),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// A mapping key: plain when safe, quoted otherwise (never a block scalar).
fn yaml_key(s: &str) -> String {
    if s.contains('\n') {
        Value::String(s.to_string()).to_string()
    } else {
        yaml_str(s, 0)
    }
}

/// A string as a YAML scalar: plain when unambiguous in YAML 1.1 and 1.2, a literal block for
/// clean multi-line text, JSON-style double quotes otherwise.
fn yaml_str(s: &str, indent: usize) -> String {
    const SPECIAL: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL",
    ];
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        && !SPECIAL.contains(&s);
    if plain {
        return s.to_string();
    }
    let clean_multiline = s.contains('\n')
        && !s.starts_with([' ', '\n'])
        && s.lines()
            .all(|l| !l.ends_with([' ', '\t']) && !l.chars().any(|c| c.is_control()));
    if clean_multiline {
        let pad = " ".repeat(indent);
        let chomp = if s.ends_with('\n') { "|" } else { "|-" };
        let mut out = String::from(chomp);
        for l in s.trim_end_matches('\n').split('\n') {
            out.push('\n');
            if !l.is_empty() {
                out.push_str(&pad);
                out.push_str(l);
            }
        }
        if s.ends_with("\n\n") {
            // Keep further trailing newlines exact: fall back to quoting.
            return Value::String(s.to_string()).to_string();
        }
        return out;
    }
    Value::String(s.to_string()).to_string()
}

struct Cx<'a> {
    object: String,
    findings: &'a mut Vec<Finding>,
}

impl Cx<'_> {
    fn push(&mut self, severity: Severity, field: &str, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            object: self.object.clone(),
            field: field.to_string(),
            message: message.into(),
        });
    }
}

/// Metadata of a converted custom resource: name, labels, annotations (and namespace, though
/// both kinds are cluster-scoped: a namespace is reported and dropped).
fn converted_metadata(obj: &Map<String, Value>, cx: &mut Cx<'_>) -> Value {
    let mut out = Map::new();
    let Some(Value::Object(meta)) = obj.get("metadata") else {
        cx.push(Severity::Unconvertible, "metadata", "missing metadata");
        return Value::Object(out);
    };
    for (k, v) in meta {
        match k.as_str() {
            "name" | "generateName" | "labels" | "annotations" => {
                out.insert(k.clone(), v.clone());
            }
            "uid"
            | "resourceVersion"
            | "creationTimestamp"
            | "generation"
            | "managedFields"
            | "selfLink"
            | "deletionTimestamp"
            | "deletionGracePeriodSeconds" => {}
            "namespace" => cx.push(
                Severity::Warning,
                "metadata.namespace",
                "the ferrolb kind is cluster-scoped; namespace dropped",
            ),
            other => cx.push(
                Severity::Unconvertible,
                &format!("metadata.{other}"),
                "not carried over (ownerReferences/finalizers point at Cilium objects)",
            ),
        }
    }
    // kubectl.kubernetes.io/last-applied-configuration describes the Cilium object.
    if let Some(Value::Object(ann)) = out.get_mut("annotations") {
        ann.remove("kubectl.kubernetes.io/last-applied-configuration");
        if ann.is_empty() {
            out.remove("annotations");
        }
    }
    Value::Object(out)
}

fn convert_pool(obj: Map<String, Value>, cx: &mut Cx<'_>) -> Value {
    let metadata = converted_metadata(&obj, cx);
    let mut spec = Map::new();
    let empty = Map::new();
    let src = match obj.get("spec") {
        Some(Value::Object(s)) => s,
        _ => {
            cx.push(Severity::Unconvertible, "spec", "missing spec");
            &empty
        }
    };
    let mut blocks: Vec<Value> = Vec::new();
    let mut allow_first_last: Option<Value> = None;
    for (k, v) in src {
        match k.as_str() {
            // `cidrs` is the field name of older v2alpha1 pools; `blocks` replaced it.
            "blocks" | "cidrs" => match v {
                Value::Array(items) => {
                    for (i, b) in items.iter().enumerate() {
                        if let Some(b) = convert_block(b, &format!("spec.{k}[{i}]"), cx) {
                            if blocks.contains(&b) {
                                cx.push(
                                    Severity::Warning,
                                    &format!("spec.{k}[{i}]"),
                                    "duplicate block dropped",
                                );
                            } else {
                                blocks.push(b);
                            }
                        }
                    }
                }
                Value::Null => {}
                _ => cx.push(Severity::Unconvertible, &format!("spec.{k}"), "not a list"),
            },
            "serviceSelector" => {
                if !v.is_null() {
                    check_selector(v, "spec.serviceSelector", cx);
                    spec.insert("serviceSelector".into(), v.clone());
                }
            }
            "disabled" => match v {
                Value::Bool(_) => {
                    spec.insert("disabled".into(), v.clone());
                }
                Value::Null => {}
                _ => cx.push(
                    Severity::Unconvertible,
                    "spec.disabled",
                    "expected true or false",
                ),
            },
            "allowFirstLastIPs" => match v.as_str() {
                Some("Yes") | Some("No") => allow_first_last = Some(v.clone()),
                _ => cx.push(
                    Severity::Unconvertible,
                    "spec.allowFirstLastIPs",
                    format!("expected Yes or No, got {v}"),
                ),
            },
            other => cx.push(
                Severity::Unconvertible,
                &format!("spec.{other}"),
                "unknown CiliumLoadBalancerIPPool field; ferrolb has no equivalent",
            ),
        }
    }
    if src.contains_key("cidrs") {
        cx.push(
            Severity::Warning,
            "spec.cidrs",
            "old v2alpha1 field converted to spec.blocks",
        );
    }
    if blocks.is_empty() {
        cx.push(
            Severity::Unconvertible,
            "spec.blocks",
            "no usable block: a ferrolb pool needs at least one",
        );
    }
    let allow = allow_first_last.unwrap_or_else(|| {
        if !src.is_empty() {
            cx.push(
                Severity::Warning,
                "spec.allowFirstLastIPs",
                "unset in Cilium means Yes (first/last addresses of CIDRs allocatable); \
                 written explicitly because ferrolb's default is No",
            );
        }
        Value::String("Yes".into())
    });
    // Field order as in the CRD: blocks, serviceSelector, disabled, allowFirstLastIPs.
    let mut ordered = Map::new();
    ordered.insert("blocks".into(), Value::Array(blocks));
    if let Some(s) = spec.remove("serviceSelector") {
        ordered.insert("serviceSelector".into(), s);
    }
    if let Some(d) = spec.remove("disabled") {
        ordered.insert("disabled".into(), d);
    }
    ordered.insert("allowFirstLastIPs".into(), allow);
    if obj.get("status").is_some_and(|s| !s.is_null()) {
        cx.push(
            Severity::Warning,
            "status",
            "Cilium's status dropped; the ferrolb controller writes its own",
        );
    }
    serde_json::json!({
        "apiVersion": format!("{}/v1alpha1", api::GROUP),
        "kind": "LoadBalancerIPPool",
        "metadata": metadata,
        "spec": Value::Object(ordered),
    })
}

/// MetalLB `IPAddressPool` → `LoadBalancerIPPool`: `addresses` (CIDRs and `a-b` ranges) →
/// `blocks`, `autoAssign`, `serviceAllocation.priority` / `namespaces` / one
/// `namespaceSelectors` / one `serviceSelectors` entry. MetalLB hands out every address of a
/// CIDR, so `allowFirstLastIPs: Yes` is written; `avoidBuggyIPs: true` (no `.0`/`.255`
/// addresses) becomes `No`, which only reserves the first/last address of each CIDR.
fn convert_metallb_pool(obj: Map<String, Value>, cx: &mut Cx<'_>) -> Value {
    let metadata = converted_metadata(&obj, cx);
    let empty = Map::new();
    let src = match obj.get("spec") {
        Some(Value::Object(s)) => s,
        _ => {
            cx.push(Severity::Unconvertible, "spec", "missing spec");
            &empty
        }
    };
    let mut spec = Map::new();
    let mut blocks: Vec<Value> = Vec::new();
    let mut allow = "Yes";
    for (k, v) in src {
        match (k.as_str(), v) {
            ("addresses", Value::Array(items)) => {
                for (i, a) in items.iter().enumerate() {
                    let field = format!("spec.addresses[{i}]");
                    let Some(a) = a.as_str().map(str::trim) else {
                        cx.push(Severity::Unconvertible, &field, "not a string");
                        continue;
                    };
                    let b = match a.split_once('-') {
                        Some((x, y)) => serde_json::json!({"start": x.trim(), "stop": y.trim()}),
                        None if a.contains('/') => serde_json::json!({"cidr": a}),
                        None => serde_json::json!({"start": a}),
                    };
                    if let Some(b) = convert_block(&b, &field, cx) {
                        if !blocks.contains(&b) {
                            blocks.push(b);
                        }
                    }
                }
            }
            ("autoAssign", Value::Bool(b)) => {
                if !b {
                    spec.insert("autoAssign".into(), Value::Bool(false));
                }
            }
            ("avoidBuggyIPs", Value::Bool(b)) => {
                if *b {
                    allow = "No";
                    cx.push(
                        Severity::Warning,
                        "spec.avoidBuggyIPs",
                        "converted to allowFirstLastIPs: No, which reserves only the first and \
                         last address of each CIDR (MetalLB skips every .0 and .255 address)",
                    );
                }
            }
            ("serviceAllocation", Value::Object(sa)) => {
                for (sk, sv) in sa {
                    let field = format!("spec.serviceAllocation.{sk}");
                    match (sk.as_str(), sv) {
                        ("priority", Value::Number(n)) if n.as_i64().is_some() => {
                            spec.insert("priority".into(), sv.clone());
                        }
                        ("namespaces", Value::Array(_)) => {
                            spec.insert("namespaces".into(), sv.clone());
                        }
                        ("namespaceSelectors" | "serviceSelectors", Value::Array(sels)) => {
                            let ours = if sk == "namespaceSelectors" {
                                "namespaceSelector"
                            } else {
                                "serviceSelector"
                            };
                            match sels.as_slice() {
                                [] => {}
                                [one] => {
                                    check_selector(one, &field, cx);
                                    spec.insert(ours.into(), one.clone());
                                }
                                _ => match merge_ored_selectors(sels) {
                                    Some(merged) => {
                                        cx.push(
                                            Severity::Warning,
                                            &field,
                                            format!(
                                                "{} selectors (ORed in MetalLB) merged into \
                                                 one {ours}",
                                                sels.len()
                                            ),
                                        );
                                        spec.insert(ours.into(), merged);
                                    }
                                    None => cx.push(
                                        Severity::Unconvertible,
                                        &field,
                                        format!(
                                            "several selectors (ORed in MetalLB) cannot be one \
                                             {ours} (only selectors that each test one value of \
                                             the same label key merge); split the pool or merge \
                                             them into one selector; left out"
                                        ),
                                    ),
                                },
                            }
                        }
                        _ => cx.push(
                            Severity::Unconvertible,
                            &field,
                            "unknown or malformed serviceAllocation field; left out",
                        ),
                    }
                }
            }
            (other, _) => cx.push(
                Severity::Unconvertible,
                &format!("spec.{other}"),
                "unknown or malformed IPAddressPool field; left out",
            ),
        }
    }
    if blocks.is_empty() {
        cx.push(
            Severity::Unconvertible,
            "spec.addresses",
            "no usable address block: a ferrolb pool needs at least one",
        );
    }
    let mut ordered = Map::new();
    ordered.insert("blocks".into(), Value::Array(blocks));
    for k in [
        "serviceSelector",
        "priority",
        "namespaces",
        "namespaceSelector",
        "autoAssign",
    ] {
        if let Some(v) = spec.remove(k) {
            ordered.insert(k.into(), v);
        }
    }
    ordered.insert("allowFirstLastIPs".into(), Value::String(allow.into()));
    serde_json::json!({
        "apiVersion": format!("{}/v1alpha1", api::GROUP),
        "kind": "LoadBalancerIPPool",
        "metadata": metadata,
        "spec": Value::Object(ordered),
    })
}

fn convert_block(b: &Value, field: &str, cx: &mut Cx<'_>) -> Option<Value> {
    let Value::Object(m) = b else {
        cx.push(Severity::Unconvertible, field, "block is not a mapping");
        return None;
    };
    let mut out = Map::new();
    for (k, v) in m {
        match (k.as_str(), v) {
            ("cidr" | "start" | "stop", Value::String(s)) => {
                let ok = if k == "cidr" {
                    s.parse::<ipnetwork::IpNetwork>().is_ok()
                } else {
                    s.parse::<std::net::IpAddr>().is_ok()
                };
                if !ok {
                    cx.push(
                        Severity::Warning,
                        &format!("{field}.{k}"),
                        format!("{s:?} does not parse; copied as is (the pool will report it)"),
                    );
                }
                out.insert(k.clone(), v.clone());
            }
            (_, Value::Null) => {}
            ("cidr" | "start" | "stop", _) => cx.push(
                Severity::Unconvertible,
                &format!("{field}.{k}"),
                "expected a string",
            ),
            (other, _) => cx.push(
                Severity::Unconvertible,
                &format!("{field}.{other}"),
                "unknown block field; dropped",
            ),
        }
    }
    let has_cidr = out.contains_key("cidr");
    let has_range = out.contains_key("start") || out.contains_key("stop");
    if has_cidr && has_range {
        cx.push(
            Severity::Unconvertible,
            field,
            "block has both cidr and start/stop; dropped",
        );
        return None;
    }
    if !has_cidr && !out.contains_key("start") {
        cx.push(
            Severity::Unconvertible,
            field,
            "block has neither cidr nor start; dropped",
        );
        return None;
    }
    // Canonical key order: cidr | start, stop.
    let mut ordered = Map::new();
    for k in ["cidr", "start", "stop"] {
        if let Some(v) = out.remove(k) {
            ordered.insert(k.into(), v);
        }
    }
    Some(Value::Object(ordered))
}

/// ORed selectors that are one selector, exactly: identical ones count once; one that selects
/// everything (`{}`) makes the OR select everything (`{}`); selectors that each require one label
/// key to have one of some values (`matchLabels` with one entry, or one `In` expression), all
/// on the same key, are `key In (union of the values)`. Anything else cannot be merged (`None`):
/// a label selector ANDs its requirements and cannot negate, so an OR over different keys has
/// no single-selector form.
fn merge_ored_selectors(sels: &[Value]) -> Option<Value> {
    let mut distinct: Vec<&Value> = Vec::new();
    for s in sels {
        let sel: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
            serde_json::from_value(s.clone()).ok()?;
        let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
        if empty {
            return Some(serde_json::json!({}));
        }
        if !distinct.contains(&s) {
            distinct.push(s);
        }
    }
    if let [one] = distinct.as_slice() {
        return Some((*one).clone());
    }
    let mut key: Option<String> = None;
    let mut values: Vec<String> = Vec::new();
    for s in sels {
        let sel: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
            serde_json::from_value(s.clone()).ok()?;
        let labels = sel.match_labels.unwrap_or_default();
        let exprs = sel.match_expressions.unwrap_or_default();
        let (k, vs) = match (labels.len(), exprs.as_slice()) {
            (1, []) => {
                let (k, v) = labels.into_iter().next()?;
                (k, vec![v])
            }
            (0, [e]) if e.operator == "In" => (e.key.clone(), e.values.clone().unwrap_or_default()),
            _ => return None,
        };
        if key.as_ref().is_some_and(|x| *x != k) {
            return None;
        }
        key = Some(k);
        for v in vs {
            if !values.contains(&v) {
                values.push(v);
            }
        }
    }
    Some(serde_json::json!({"matchExpressions": [
        {"key": key?, "operator": "In", "values": values}
    ]}))
}

/// Checks that a selector has the LabelSelector shape; reports what the API server would reject.
fn check_selector(v: &Value, field: &str, cx: &mut Cx<'_>) {
    if serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>(
        v.clone(),
    )
    .is_err()
    {
        cx.push(
            Severity::Warning,
            field,
            "not a valid LabelSelector; copied as is (the API server or controller will report it)",
        );
    }
}

fn convert_policy(obj: Map<String, Value>, cx: &mut Cx<'_>) -> Value {
    let metadata = converted_metadata(&obj, cx);
    let empty = Map::new();
    let src = match obj.get("spec") {
        Some(Value::Object(s)) => s,
        _ => &empty,
    };
    let mut selector_fields: Vec<(String, Value)> = Vec::new();
    let mut interfaces: Vec<Value> = Vec::new();
    let mut lb_ips = false;
    let mut ext_ips = false;
    for (k, v) in src {
        match k.as_str() {
            "serviceSelector" | "nodeSelector" => {
                if !v.is_null() {
                    check_selector(v, &format!("spec.{k}"), cx);
                    selector_fields.push((k.clone(), v.clone()));
                }
            }
            "interfaces" => match v {
                Value::Array(items) => {
                    for (i, it) in items.iter().enumerate() {
                        let f = format!("spec.interfaces[{i}]");
                        match it.as_str() {
                            Some(re) => {
                                let anchored = anchor_regex(re);
                                if regex::Regex::new(&anchored).is_err() {
                                    cx.push(
                                        Severity::Unconvertible,
                                        &f,
                                        format!("{re:?} is not a valid regular expression here; dropped"),
                                    );
                                    continue;
                                }
                                if anchored != re {
                                    cx.push(
                                        Severity::Warning,
                                        &f,
                                        format!(
                                            "Cilium matches unanchored; rewritten {re:?} -> {anchored:?}"
                                        ),
                                    );
                                }
                                interfaces.push(Value::String(anchored));
                            }
                            None => cx.push(Severity::Unconvertible, &f, "expected a string"),
                        }
                    }
                }
                Value::Null => {}
                _ => cx.push(Severity::Unconvertible, "spec.interfaces", "not a list"),
            },
            "loadBalancerIPs" | "externalIPs" => match v {
                Value::Bool(b) => {
                    if k == "loadBalancerIPs" {
                        lb_ips = *b;
                    } else {
                        ext_ips = *b;
                    }
                }
                Value::Null => {}
                _ => cx.push(
                    Severity::Unconvertible,
                    &format!("spec.{k}"),
                    "expected true or false",
                ),
            },
            other => cx.push(
                Severity::Unconvertible,
                &format!("spec.{other}"),
                "unknown CiliumL2AnnouncementPolicy field; ferrolb has no equivalent",
            ),
        }
    }
    if !src.contains_key("loadBalancerIPs") {
        cx.push(
            Severity::Warning,
            "spec.loadBalancerIPs",
            "unset in Cilium means false; written explicitly because ferrolb's default is true",
        );
    }
    if !lb_ips && !ext_ips {
        cx.push(
            Severity::Warning,
            "spec",
            "neither loadBalancerIPs nor externalIPs is true: this policy announces nothing \
             (as in Cilium)",
        );
    }
    let mut spec = Map::new();
    for key in ["serviceSelector", "nodeSelector"] {
        if let Some((_, v)) = selector_fields.iter().find(|(k, _)| k == key) {
            spec.insert(key.into(), v.clone());
        }
    }
    if !interfaces.is_empty() {
        spec.insert("interfaces".into(), Value::Array(interfaces));
    }
    spec.insert("loadBalancerIPs".into(), Value::Bool(lb_ips));
    spec.insert("externalIPs".into(), Value::Bool(ext_ips));
    if obj.get("status").is_some_and(|s| !s.is_null()) {
        cx.push(Severity::Warning, "status", "Cilium's status dropped");
    }
    serde_json::json!({
        "apiVersion": format!("{}/v1alpha1", api::GROUP),
        "kind": "L2AnnouncementPolicy",
        "metadata": metadata,
        "spec": Value::Object(spec),
    })
}

/// Cilium (Go `regexp.MatchString`) finds a match anywhere in the name; ferrolb anchors. The
/// rewrite keeps the meaning: `^eth[0-9]+` -> `^eth[0-9]+.*$`, `ens` -> `^.*ens.*$`, and an
/// expression with alternatives is grouped first (`a|b` -> `^.*(?:a|b).*$`).
fn anchor_regex(re: &str) -> String {
    let starts = re.starts_with('^');
    let ends = re.ends_with('$') && !re.ends_with("\\$");
    if starts && ends {
        return re.to_string();
    }
    if re.contains('|') {
        return format!("^.*(?:{re}).*$");
    }
    match (starts, ends) {
        (true, false) => format!("{re}.*$"),
        (false, true) => format!("^.*{re}"),
        _ => format!("^.*{re}.*$"),
    }
}

fn convert_service(mut obj: Map<String, Value>, cx: &mut Cx<'_>) -> Value {
    // Annotations: (ours, cilium aliases).
    let pairs: [(&str, &[&str]); 6] = [
        (api::ANN_IPS, api::CILIUM_ANN_IPS),
        (api::ANN_SHARING_KEY, api::CILIUM_ANN_SHARING_KEY),
        (api::ANN_SHARING_CROSS_NS, api::CILIUM_ANN_SHARING_CROSS_NS),
        (api::ANN_IPS, api::METALLB_ANN_IPS),
        (api::ANN_SHARING_KEY, api::METALLB_ANN_SHARING_KEY),
        (api::ANN_POOLS, api::METALLB_ANN_POOL),
    ];
    let known_cilium: Vec<&str> = pairs.iter().flat_map(|(_, a)| a.iter().copied()).collect();
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        if let Some(Value::Object(ann)) = meta.get_mut("annotations") {
            let known_metallb_keys: Vec<String> = ann
                .keys()
                .filter(|k| api::METALLB_ANN_SHARING_KEY.contains(&k.as_str()))
                .cloned()
                .collect();
            for (ours, aliases) in pairs {
                for alias in aliases {
                    let Some(v) = ann.remove(*alias) else {
                        continue;
                    };
                    let field = format!("metadata.annotations[{alias}]");
                    match ann.get(ours) {
                        Some(existing) if existing != &v => cx.push(
                            Severity::Warning,
                            &field,
                            format!(
                                "{ours} is already set to {existing} (kept); Cilium's {v} dropped"
                            ),
                        ),
                        Some(_) => {}
                        None => {
                            ann.insert(ours.to_string(), v);
                        }
                    }
                }
            }
            // MetalLB shares a key across namespaces: keep that meaning.
            let metallb_key = api::METALLB_ANN_SHARING_KEY
                .iter()
                .any(|k| obj_had(&known_metallb_keys, k));
            if metallb_key && !ann.contains_key(api::ANN_SHARING_CROSS_NS) {
                ann.insert(api::ANN_SHARING_CROSS_NS.into(), Value::String("*".into()));
                cx.push(
                    Severity::Warning,
                    "metadata.annotations[metallb.io/allow-shared-ip]",
                    "MetalLB shares a key across namespaces: ferrolb.io/sharing-cross-namespace: \"*\" added",
                );
            }
            let unknown: Vec<String> = ann
                .keys()
                .filter(|k| {
                    (k.starts_with("lbipam.cilium.io/")
                        || k.starts_with("io.cilium/lb-ipam")
                        || k.starts_with("metallb.io/")
                        || k.starts_with("metallb.universe.tf/"))
                        // Written by MetalLB's controller, informational only.
                        && !k.ends_with("/ip-allocated-from-pool")
                        && !known_cilium.contains(&k.as_str())
                })
                .cloned()
                .collect();
            for k in unknown {
                cx.push(
                    Severity::Unconvertible,
                    &format!("metadata.annotations[{k}]"),
                    "Cilium LB-IPAM / MetalLB annotation without a ferrolb equivalent; left \
                     in place (ferrolb ignores it)",
                );
            }
            // The last applied configuration describes the Cilium form of the object.
            ann.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    if let Some(Value::Object(spec)) = obj.get_mut("spec") {
        if spec.get("loadBalancerClass").and_then(Value::as_str) == Some(api::CILIUM_LB_CLASS) {
            spec.insert(
                "loadBalancerClass".into(),
                Value::String(api::LB_CLASS.into()),
            );
            cx.push(
                Severity::Warning,
                "spec.loadBalancerClass",
                format!(
                    "{} -> {}: the field is immutable on an existing Service, so recreate it \
                     (or keep Cilium's class and run the controller and agents with \
                     --serve-cilium-class)",
                    api::CILIUM_LB_CLASS,
                    api::LB_CLASS
                ),
            );
        }
    }
    Value::Object(obj)
}

fn obj_had(keys: &[String], k: &str) -> bool {
    keys.iter().any(|x| x == k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(text: &str) -> Conversion {
        let mut c = Conversion::default();
        convert_documents("t.yaml", parse_documents(text).expect("parses"), &mut c);
        c
    }

    fn fields(c: &Conversion, sev: Severity) -> Vec<String> {
        c.findings
            .iter()
            .filter(|f| f.severity == sev)
            .map(|f| f.field.clone())
            .collect()
    }

    #[test]
    fn metallb_configuration_converts_and_plans() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/convert/metallb.yaml"
        ))
        .expect("fixture");
        let c = conv(&text);
        // Only the BGPPeer is unconvertible (l2-manual's ipAddressPools map to spec.pools).
        let unconv: Vec<&Finding> = c
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Unconvertible)
            .collect();
        assert_eq!(unconv.len(), 1, "{unconv:?}");
        assert!(unconv[0].object.contains("BGPPeer/tor"));
        // The advertisements: l2 (two ORed node selectors) → l2-1, l2-2; l2-manual → one.
        let policies: Vec<api::L2AnnouncementPolicy> = c
            .objects
            .iter()
            .filter(|o| o["kind"] == "L2AnnouncementPolicy")
            .map(|o| serde_json::from_value(o.clone()).expect("a ferrolb policy"))
            .collect();
        let names: Vec<&str> = policies
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["l2-1", "l2-2", "l2-manual"]);
        let refs: Vec<&api::L2AnnouncementPolicy> = policies.iter().collect();
        assert_eq!(
            ferrolb::agent::eligibility::policy_problems(&refs),
            [],
            "the converted policies pass the agent's checks"
        );
        let l2 = &policies[0].spec;
        assert_eq!(l2.interfaces, ["eth1", "bond0\\.100"]);
        assert!(l2.load_balancer_ips && !l2.external_ips);
        assert_eq!(l2.preferred_nodes.len(), 2);
        assert_eq!(l2.preferred_nodes[0].weight, 50);
        assert_eq!(policies[1].spec.preferred_nodes, l2.preferred_nodes);
        assert_ne!(policies[1].spec.node_selector, l2.node_selector);
        assert!(policies[2].spec.preferred_nodes.is_empty());
        assert_eq!(policies[2].spec.pools, ["manual"]);
        assert!(
            l2.pools.is_empty() && l2.pool_selector.is_none(),
            "every pool"
        );
        let pools: Vec<api::LoadBalancerIPPool> = c
            .objects
            .iter()
            .filter(|o| o["kind"] == "LoadBalancerIPPool")
            .map(|o| serde_json::from_value(o.clone()).expect("a ferrolb pool"))
            .collect();
        assert_eq!(pools.len(), 4);
        let a = &pools[0].spec;
        assert_eq!(a.priority, Some(10));
        assert_eq!(a.namespaces, ["team-a"]);
        assert_eq!(a.allow_first_last_ips, api::YesNo::Yes);
        let gold = &pools[1].spec;
        assert_eq!(gold.blocks[0].start.as_deref(), Some("198.51.100.64"));
        assert_eq!(gold.blocks[0].stop.as_deref(), Some("198.51.100.79"));
        assert_eq!(gold.allow_first_last_ips, api::YesNo::No, "avoidBuggyIPs");
        assert!(gold.namespace_selector.is_some() && gold.service_selector.is_some());
        // Two ORed namespaceSelectors on one key: merged into one `In`.
        let ns_sel = gold.namespace_selector.clone().unwrap();
        let e = &ns_sel.match_expressions.unwrap()[0];
        assert_eq!((e.key.as_str(), e.operator.as_str()), ("tier", "In"));
        assert_eq!(e.values.clone().unwrap(), ["gold", "platinum"]);
        assert_eq!(pools[2].spec.auto_assign, Some(false));
        assert_eq!(pools[2].spec.blocks.len(), 2);
        // Service annotations, both spellings.
        let svc = |n: &str| {
            c.objects
                .iter()
                .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == n)
                .expect("service")
                .clone()
        };
        for n in ["dns-udp", "dns-tcp"] {
            let ann = &svc(n)["metadata"]["annotations"];
            assert_eq!(ann[api::ANN_IPS], "198.51.100.20", "{n}");
            assert_eq!(ann[api::ANN_SHARING_KEY], "dns", "{n}");
            assert_eq!(ann[api::ANN_SHARING_CROSS_NS], "*", "{n}");
            assert!(ann.get("metallb.io/loadBalancerIPs").is_none());
        }
        assert_eq!(
            svc("db")["metadata"]["annotations"][api::ANN_POOLS],
            "manual"
        );

        // `ferrolb plan` on the converted objects: every Service gets what it asked for.
        let mut input = crate::plan::ClusterInput {
            name: "default".into(),
            ..Default::default()
        };
        for o in &c.objects {
            crate::plan::parse_documents(
                "converted",
                &serde_json::to_string(o).unwrap(),
                &mut input,
            )
            .expect("plan input");
        }
        let rep = crate::plan::plan(&[input], &ferrolb::ipam::ClassOptions::default());
        let got = |ns: &str, n: &str| {
            rep.clusters[0]
                .services
                .iter()
                .find(|s| s.namespace == ns && s.name == n)
                .map(|s| {
                    (
                        s.reason.clone(),
                        s.addresses.iter().map(|a| a.ip.clone()).collect::<Vec<_>>(),
                    )
                })
                .expect("service planned")
        };
        assert_eq!(
            got("team-a", "dns-udp"),
            ("Satisfied".into(), vec!["198.51.100.20".into()])
        );
        assert_eq!(
            got("team-a", "dns-tcp"),
            ("Satisfied".into(), vec!["198.51.100.20".into()])
        );
        assert_eq!(
            got("team-b", "db"),
            ("Satisfied".into(), vec!["203.0.113.10".into()])
        );
        // team-b is not team-a's and not gold: the unprioritised default pool.
        assert_eq!(
            got("team-b", "web"),
            ("Satisfied".into(), vec!["192.0.2.0".into()])
        );
    }

    #[test]
    fn l2advertisement_over_every_pool_converts_exactly() {
        let text = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a, labels: {env: prod}}\nspec: {addresses: [198.51.100.0/28]}\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: b}\nspec: {addresses: [198.51.100.16/28]}\n";
        let policies = |sel: &str| -> (Conversion, Vec<api::L2AnnouncementPolicy>) {
            let c = conv(&format!(
                "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: l2}}\nspec: {sel}\n---\n{text}"
            ));
            assert!(!c.has_unconvertible(), "{sel}: {:?}", c.findings);
            let p = c
                .objects
                .iter()
                .filter(|o| o["kind"] == "L2AnnouncementPolicy")
                .map(|o| serde_json::from_value(o.clone()).expect("a policy"))
                .collect();
            (c, p)
        };
        // Unset: every pool (no restriction).
        let (_, p) = policies("{}");
        assert_eq!(p.len(), 1);
        assert!(p[0].spec.pools.is_empty() && p[0].spec.pool_selector.is_none());
        // Names and one selector: copied as they are (ORed in both).
        let (_, p) = policies(
            "{ipAddressPools: [b, b], ipAddressPoolSelectors: [{matchLabels: {env: prod}}]}",
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].metadata.name.as_deref(), Some("l2"));
        assert_eq!(p[0].spec.pools, ["b"]);
        let sel = p[0].spec.pool_selector.clone().expect("poolSelector");
        assert_eq!(
            sel.match_labels,
            Some([("env".to_string(), "prod".to_string())].into())
        );
        // Two selectors on one key: one `In`.
        let (c, p) = policies(
            "{ipAddressPoolSelectors: [{matchLabels: {env: prod}}, {matchLabels: {env: dev}}]}",
        );
        assert_eq!(p.len(), 1);
        let e = &p[0]
            .spec
            .pool_selector
            .clone()
            .unwrap()
            .match_expressions
            .unwrap()[0];
        assert_eq!((e.key.as_str(), e.operator.as_str()), ("env", "In"));
        assert_eq!(e.values.clone().unwrap(), ["prod", "dev"]);
        assert_eq!(
            fields(&c, Severity::Warning),
            ["spec.ipAddressPoolSelectors"]
        );
        // On two keys: one policy per selector, the names in each.
        let (_, p) = policies(
            "{ipAddressPools: [b], ipAddressPoolSelectors: [{matchLabels: {env: prod}}, {matchLabels: {team: x}}]}",
        );
        let names: Vec<&str> = p
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["l2-1", "l2-2"]);
        assert!(p.iter().all(|p| p.spec.pools == ["b"]));
        assert_ne!(p[0].spec.pool_selector, p[1].spec.pool_selector);
        // A name not in the input: converted, with a warning.
        let (c, p) = policies("{ipAddressPools: [zzz]}");
        assert_eq!(p[0].spec.pools, ["zzz"]);
        assert!(c.findings.iter().any(|f| f.message.contains("zzz")));
    }

    #[test]
    fn l2advertisement_selectors_interfaces_and_preferences() {
        let c = conv(
            "apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l2, namespace: metallb-system}\nspec:\n  serviceSelectors: [{matchLabels: {app: a}}, {matchLabels: {app: b}}]\n  nodeSelectors: [{matchLabels: {edge: 'true'}}]\n  interfaces: [eth0, 'vlan.10']\n  preferredNodeSelectors:\n  - {weight: 30, preference: {matchLabels: {zone: a}}}\n  - {weight: 0, preference: {matchLabels: {zone: b}}}\n  - {weight: 5}\n  bogus: 1\n",
        );
        let policies: Vec<api::L2AnnouncementPolicy> = c
            .objects
            .iter()
            .map(|o| serde_json::from_value(o.clone()).expect("a policy"))
            .collect();
        // Two ORed serviceSelectors × one nodeSelector: two policies.
        assert_eq!(policies.len(), 2);
        assert_eq!(policies[0].metadata.name.as_deref(), Some("l2-1"));
        assert_eq!(policies[1].metadata.name.as_deref(), Some("l2-2"));
        let app = |p: &api::L2AnnouncementPolicy| {
            p.spec
                .service_selector
                .clone()
                .unwrap()
                .match_labels
                .unwrap()["app"]
                .clone()
        };
        assert_eq!(
            (app(&policies[0]), app(&policies[1])),
            ("a".into(), "b".into())
        );
        for p in &policies {
            assert_eq!(p.spec.interfaces, ["eth0", "vlan\\.10"]);
            assert_eq!(p.spec.preferred_nodes.len(), 1, "bad entries left out");
            assert_eq!(p.spec.preferred_nodes[0].weight, 30);
            assert!(p.spec.node_selector.is_some());
        }
        // The escaped names match exactly that interface (anchored by the agent).
        let re = ferrolb::agent::eligibility::compile_interface_regex("vlan\\.10").unwrap();
        assert!(re.is_match("vlan.10") && !re.is_match("vlanx10") && !re.is_match("vlan.100"));
        let mut unconv = fields(&c, Severity::Unconvertible);
        unconv.sort();
        assert_eq!(
            unconv,
            [
                "spec.bogus",
                "spec.preferredNodeSelectors[1].weight",
                "spec.preferredNodeSelectors[2]"
            ]
        );
    }

    #[test]
    fn ored_pool_selectors_merge_only_on_one_key() {
        let pool = |sels: &str| {
            conv(&format!(
                "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: p}}\nspec:\n  addresses: [198.51.100.0/28]\n  serviceAllocation:\n    serviceSelectors: {sels}\n"
            ))
        };
        let c = pool("[{matchLabels: {team: a}}, {matchExpressions: [{key: team, operator: In, values: [b, a]}]}]");
        assert!(!c.has_unconvertible(), "{:?}", c.findings);
        let p: api::LoadBalancerIPPool = serde_json::from_value(c.objects[0].clone()).unwrap();
        let e = &p.spec.service_selector.unwrap().match_expressions.unwrap()[0];
        assert_eq!(e.key, "team");
        assert_eq!(e.values.clone().unwrap(), ["a", "b"]);
        for bad in [
            "[{matchLabels: {team: a}}, {matchLabels: {env: prod}}]",
            "[{matchLabels: {team: a, env: prod}}, {matchLabels: {team: b}}]",
            "[{matchLabels: {team: a}}, {matchExpressions: [{key: team, operator: NotIn, values: [b]}]}]",
        ] {
            let c = pool(bad);
            assert_eq!(
                fields(&c, Severity::Unconvertible),
                ["spec.serviceAllocation.serviceSelectors"],
                "{bad}"
            );
        }
    }

    #[test]
    fn ored_selectors_merge_only_when_exact() {
        let v = |t: &str| -> Value { serde_json::from_str(t).unwrap() };
        let a = v(r#"{"matchLabels": {"a": "x"}}"#);
        let b = v(r#"{"matchLabels": {"b": "y"}}"#);
        // Different keys: no single selector.
        assert_eq!(merge_ored_selectors(&[a.clone(), b.clone()]), None);
        // One selects everything: the OR does too.
        assert_eq!(
            merge_ored_selectors(&[a.clone(), v("{}"), b.clone()]),
            Some(v("{}"))
        );
        // Duplicates count once.
        assert_eq!(merge_ored_selectors(&[b.clone(), b.clone()]), Some(b));
        // Same key: one In.
        assert_eq!(
            merge_ored_selectors(&[
                a,
                v(r#"{"matchExpressions": [{"key": "a", "operator": "In", "values": ["z"]}]}"#)
            ]),
            Some(v(
                r#"{"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", "z"]}]}"#
            ))
        );
    }

    #[test]
    fn seed_pool_v2_start_stop() {
        let c = conv(
            "apiVersion: cilium.io/v2\nkind: CiliumLoadBalancerIPPool\nmetadata:\n  name: cluster-pool\nspec:\n  blocks:\n    - start: 198.51.100.220\n      stop: 198.51.100.220\n",
        );
        assert!(!c.has_unconvertible(), "{:?}", c.findings);
        let p: api::LoadBalancerIPPool =
            serde_json::from_value(c.objects[0].clone()).expect("a ferrolb pool");
        assert_eq!(p.metadata.name.as_deref(), Some("cluster-pool"));
        assert_eq!(p.spec.blocks.len(), 1);
        assert_eq!(p.spec.blocks[0].start.as_deref(), Some("198.51.100.220"));
        assert_eq!(p.spec.blocks[0].stop.as_deref(), Some("198.51.100.220"));
        assert_eq!(p.spec.allow_first_last_ips, api::YesNo::Yes);
        assert!(p.spec.service_selector.is_none());
    }

    #[test]
    fn old_v2alpha1_cidrs_and_explicit_no() {
        let c = conv(
            "apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\nmetadata:\n  name: old\n  uid: 1234\n  resourceVersion: '9'\nspec:\n  allowFirstLastIPs: \"No\"\n  cidrs:\n  - cidr: 198.51.100.0/28\n  - cidr: 2001:db8:100::/120\n  serviceSelector:\n    matchLabels:\n      lb-pool: app\nstatus:\n  conditions: []\n",
        );
        assert!(!c.has_unconvertible(), "{:?}", c.findings);
        let o = &c.objects[0];
        assert_eq!(o["apiVersion"], "ferrolb.io/v1alpha1");
        assert!(o["metadata"].get("uid").is_none());
        assert!(o["metadata"].get("resourceVersion").is_none());
        assert!(o.get("status").is_none());
        let p: api::LoadBalancerIPPool = serde_json::from_value(o.clone()).expect("pool");
        assert_eq!(p.spec.blocks.len(), 2);
        assert_eq!(p.spec.blocks[1].cidr.as_deref(), Some("2001:db8:100::/120"));
        assert_eq!(p.spec.allow_first_last_ips, api::YesNo::No);
        let sel = p.spec.service_selector.expect("selector kept");
        assert_eq!(
            sel.match_labels.unwrap().get("lb-pool").map(String::as_str),
            Some("app")
        );
        assert!(fields(&c, Severity::Warning).contains(&"spec.cidrs".to_string()));
    }

    #[test]
    fn unknown_pool_field_is_reported_not_dropped_silently() {
        let c = conv(
            "apiVersion: cilium.io/v2\nkind: CiliumLoadBalancerIPPool\nmetadata:\n  name: p\nspec:\n  blocks:\n  - cidr: 198.51.100.0/24\n    extra: 1\n  futureField: true\n  allowFirstLastIPs: Maybe\n",
        );
        assert!(c.has_unconvertible());
        let bad = fields(&c, Severity::Unconvertible);
        assert!(bad.contains(&"spec.futureField".to_string()), "{bad:?}");
        assert!(bad.contains(&"spec.blocks[0].extra".to_string()), "{bad:?}");
        assert!(
            bad.contains(&"spec.allowFirstLastIPs".to_string()),
            "{bad:?}"
        );
        // The usable part is still converted.
        assert_eq!(c.objects.len(), 1);
        assert_eq!(c.objects[0]["spec"]["blocks"][0]["cidr"], "198.51.100.0/24");
    }

    #[test]
    fn block_with_cidr_and_range_is_dropped_and_reported() {
        let c = conv(
            "apiVersion: cilium.io/v2\nkind: CiliumLoadBalancerIPPool\nmetadata:\n  name: p\nspec:\n  blocks:\n  - cidr: 198.51.100.0/24\n    start: 198.51.100.1\n",
        );
        assert!(c.has_unconvertible());
        assert!(fields(&c, Severity::Unconvertible).contains(&"spec.blocks[0]".to_string()));
        assert!(fields(&c, Severity::Unconvertible).contains(&"spec.blocks".to_string()));
    }

    #[test]
    fn seed_policy_defaults_written_explicitly() {
        let c = conv(
            "apiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata:\n  name: l2-policy\nspec:\n  externalIPs: true\n",
        );
        assert!(!c.has_unconvertible(), "{:?}", c.findings);
        let p: api::L2AnnouncementPolicy =
            serde_json::from_value(c.objects[0].clone()).expect("policy");
        // Cilium's unset loadBalancerIPs is false; ours defaults to true, so it must be explicit.
        assert!(!p.spec.load_balancer_ips);
        assert!(p.spec.external_ips);
        assert_eq!(c.objects[0]["spec"]["loadBalancerIPs"], false);
    }

    #[test]
    fn policy_interfaces_anchored_and_bad_regex_reported() {
        let c = conv(
            "apiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata:\n  name: p\nspec:\n  loadBalancerIPs: true\n  interfaces: ['^eth[0-9]+$', 'ens', '(bad']\n  nodeSelector:\n    matchExpressions:\n    - {key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}\n  unknownKnob: 3\n",
        );
        let ifs = c.objects[0]["spec"]["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 2);
        assert_eq!(ifs[0], "^eth[0-9]+$");
        assert_eq!(ifs[1], "^.*ens.*$");
        let re = regex::Regex::new(ifs[1].as_str().unwrap()).unwrap();
        assert!(re.is_match("ens18") && !re.is_match("eth0"));
        let bad = fields(&c, Severity::Unconvertible);
        assert!(bad.contains(&"spec.interfaces[2]".to_string()), "{bad:?}");
        assert!(bad.contains(&"spec.unknownKnob".to_string()), "{bad:?}");
        assert!(c.objects[0]["spec"]["nodeSelector"]["matchExpressions"].is_array());
    }

    #[test]
    fn seed_service_class_and_annotations() {
        let c = conv(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  labels:\n    lb-pool: app\n  annotations:\n    service.cilium.io/global: \"true\"\n    service.cilium.io/affinity: \"local\"\n    lbipam.cilium.io/ips: 198.51.100.230\n    io.cilium/lb-ipam-sharing-key: dns\n    lbipam.cilium.io/sharing-cross-namespace: '*'\nspec:\n  type: LoadBalancer\n  loadBalancerClass: io.cilium/l2-announcer\n  selector:\n    app: echo\n  ports:\n  - port: 80\n    targetPort: 80\n",
        );
        assert!(!c.has_unconvertible(), "{:?}", c.findings);
        let s = &c.objects[0];
        let ann = s["metadata"]["annotations"].as_object().unwrap();
        assert_eq!(ann["service.cilium.io/global"], "true");
        assert_eq!(ann["service.cilium.io/affinity"], "local");
        assert_eq!(ann["ferrolb.io/ips"], "198.51.100.230");
        assert_eq!(ann["ferrolb.io/sharing-key"], "dns");
        assert_eq!(ann["ferrolb.io/sharing-cross-namespace"], "*");
        assert!(!ann.contains_key("lbipam.cilium.io/ips"));
        assert!(!ann.contains_key("io.cilium/lb-ipam-sharing-key"));
        assert_eq!(s["spec"]["loadBalancerClass"], "ferrolb.io/l2-announcer");
        assert_eq!(s["metadata"]["labels"]["lb-pool"], "app");
        assert!(fields(&c, Severity::Warning).contains(&"spec.loadBalancerClass".to_string()));
    }

    #[test]
    fn anchoring_keeps_cilium_semantics() {
        let names = [
            "eth0", "eth10", "veth0", "ens18", "eth0.100", "bond0", "xeth1x",
        ];
        for re in [
            "^eth[0-9]+",
            "eth[0-9]+$",
            "eth",
            "^eth0$",
            "eth0|bond",
            "^eth|ens",
        ] {
            let go_like = regex::Regex::new(re).unwrap(); // unanchored find, like Go MatchString
            let ours = regex::Regex::new(&anchor_regex(re)).unwrap();
            for n in names {
                // Anchored full-match semantics: the whole name must match.
                let full = ours
                    .find(n)
                    .is_some_and(|m| m.start() == 0 && m.end() == n.len());
                assert_eq!(
                    go_like.is_match(n),
                    full,
                    "{re} -> {} on {n}",
                    anchor_regex(re)
                );
            }
        }
        assert_eq!(anchor_regex("^eth[0-9]+"), "^eth[0-9]+.*$");
    }

    #[test]
    fn conflicting_annotation_keeps_ours_and_reports() {
        let c = conv(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  annotations:\n    ferrolb.io/ips: 198.51.100.1\n    lbipam.cilium.io/ips: 198.51.100.2\n    lbipam.cilium.io/future-thing: x\nspec:\n  type: LoadBalancer\n",
        );
        let ann = c.objects[0]["metadata"]["annotations"].as_object().unwrap();
        assert_eq!(ann["ferrolb.io/ips"], "198.51.100.1");
        assert!(ann.contains_key("lbipam.cilium.io/future-thing"));
        assert!(fields(&c, Severity::Warning)
            .contains(&"metadata.annotations[lbipam.cilium.io/ips]".to_string()));
        assert!(fields(&c, Severity::Unconvertible)
            .contains(&"metadata.annotations[lbipam.cilium.io/future-thing]".to_string()));
    }

    #[test]
    fn foreign_class_and_other_kinds_untouched() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  type: LoadBalancer\n  loadBalancerClass: example.com/other\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  replicas: 1\n";
        let c = conv(text);
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        assert_eq!(c.objects, parse_documents(text).unwrap());
    }

    #[test]
    fn other_cilium_kinds_reported_and_left_out() {
        let c = conv(
            "apiVersion: cilium.io/v2alpha1\nkind: CiliumBGPPeeringPolicy\nmetadata:\n  name: b\nspec: {}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c}\n",
        );
        assert!(c.has_unconvertible());
        assert_eq!(c.objects.len(), 1);
        assert_eq!(c.objects[0]["kind"], "ConfigMap");
        assert!(c.findings[0].object.contains("CiliumBGPPeeringPolicy/b"));
    }

    #[test]
    fn garbage_input_is_an_error_or_finding_not_a_panic() {
        assert!(parse_documents("a: [unclosed").is_err());
        let c = conv("- just\n- a list\n---\n42\n");
        assert_eq!(c.objects.len(), 0);
        assert_eq!(fields(&c, Severity::Unconvertible).len(), 2);
        let c = conv("apiVersion: cilium.io/v2\nkind: CiliumLoadBalancerIPPool\nspec: 7\n");
        assert!(c.has_unconvertible());
    }

    #[test]
    fn yaml_emitter_round_trips_awkward_values() {
        let v = serde_json::json!({
            "a": "No", "b": "on", "c": "198.51.100.1", "d": "2001:db8::/64", "e": "",
            "f": "line one\nline two\n", "g": "trailing \nspace", "h": "x: y", "i": "#c",
            "j": [], "k": {}, "l": [[1, 2], {"m": null, "n": [true, 1.5]}], "o": "-1",
            "p": "ferrolb.io/v1alpha1", "q": "0x1F", "r": "a\n\n", "s": "\ttab",
            "t": [{"u": {"v": ["w"]}, "x": "y"}], "multi\nkey": 1
        });
        let y = to_yaml(&v);
        assert_eq!(parse_documents(&y).unwrap(), vec![v], "{y}");
        for word in ["No", "on", "Yes", "off", "y"] {
            assert_ne!(yaml_str(word, 0), word);
        }
        assert_eq!(yaml_str("ferrolb.io/ips", 0), "ferrolb.io/ips");
    }

    #[test]
    fn render_yaml_and_json_round_trip() {
        let c = conv(
            "apiVersion: cilium.io/v2\nkind: CiliumLoadBalancerIPPool\nmetadata:\n  name: a\nspec:\n  blocks: [{cidr: 198.51.100.0/30}]\n",
        );
        let y = render(&c.objects, Output::Yaml).unwrap();
        assert_eq!(parse_documents(&y).unwrap(), c.objects);
        // YAML 1.1 readers (kubectl) must not see booleans.
        assert!(y.contains("allowFirstLastIPs: \"Yes\""), "{y}");
        let j = render(&c.objects, Output::Json).unwrap();
        // A `kind: List` flattens back to its items.
        assert_eq!(parse_documents(&j).unwrap(), c.objects);
    }
}
