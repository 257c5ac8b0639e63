//! `ferrolb crds`: the CustomResourceDefinitions generated from [`crate::api`].
//!
//! The CRDs come from the Rust types (kube derive + schemars), then [`finish_schema`] adds what
//! the derive cannot express (the `operator` enum of label selectors, the standard bounds of
//! `metav1.Condition`, integer minimums), matching the CRD a real kube-apiserver was given in
//! `kube-golden/02-create-crd.txt`.
//!
//! YAML is written by our own small emitter ([`to_yaml`]), not serde_yaml: serde_yaml emits YAML
//! 1.2 and leaves strings such as `No`, `yes`, `on`, `0755` or `1:30` unquoted, which YAML 1.1
//! parsers (kubectl's sigs.k8s.io/yaml, PyYAML) read as booleans or numbers — `default: No`
//! became `false`. Every string that any YAML 1.1 or 1.2 resolver could read as something other
//! than a string is quoted.

use std::sync::LazyLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::api::{L2Announcement, L2AnnouncementPolicy, LoadBalancerIPPool};

/// Command-line flags of `ferrolb crds`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Write one file per CRD into this directory instead of printing a multi-document stream.
    #[arg(long)]
    pub out_dir: Option<std::path::PathBuf>,
}

/// Every CRD, with the file name it is kept under in `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        (
            "loadbalancerippools.ferrolb.io.yaml",
            finish(LoadBalancerIPPool::crd()),
        ),
        (
            "l2announcementpolicies.ferrolb.io.yaml",
            finish(L2AnnouncementPolicy::crd()),
        ),
        (
            "l2announcements.ferrolb.io.yaml",
            finish(L2Announcement::crd()),
        ),
    ]
}

fn finish(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut v = match serde_json::to_value(&crd) {
        Ok(v) => v,
        Err(_) => return crd,
    };
    finish_schema(&mut v);
    serde_json::from_value(v).unwrap_or(crd)
}

/// Adds the validation the derive cannot express, anywhere in the document:
/// - label selector requirements: `operator` enum `In, NotIn, Exists, DoesNotExist`;
/// - `metav1.Condition`: `status` enum `True, False, Unknown`, `type` ≤ 316, `reason` 1..=1024,
///   `message` ≤ 32768, `observedGeneration` ≥ 0 (the bounds of the upstream type);
/// - integer `minimum`/`maximum` written as integers (`0`, not `0.0`).
pub fn finish_schema(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get_mut("properties") {
                let is_req = props.contains_key("key")
                    && props.contains_key("operator")
                    && props.contains_key("values");
                if is_req {
                    if let Some(Value::Object(op)) = props.get_mut("operator") {
                        op.insert(
                            "enum".into(),
                            serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist"]),
                        );
                    }
                }
                let is_cond = ["lastTransitionTime", "reason", "message", "status", "type"]
                    .iter()
                    .all(|k| props.contains_key(*k));
                if is_cond {
                    let set =
                        |props: &mut serde_json::Map<String, Value>, f: &str, k: &str, x: Value| {
                            if let Some(Value::Object(o)) = props.get_mut(f) {
                                o.insert(k.into(), x);
                            }
                        };
                    set(
                        props,
                        "status",
                        "enum",
                        serde_json::json!(["True", "False", "Unknown"]),
                    );
                    set(props, "type", "maxLength", 316.into());
                    set(props, "reason", "minLength", 1.into());
                    set(props, "reason", "maxLength", 1024.into());
                    set(props, "message", "maxLength", 32768.into());
                    set(props, "observedGeneration", "minimum", 0.into());
                }
            }
            if m.get("type").and_then(Value::as_str) == Some("integer") {
                for k in ["minimum", "maximum"] {
                    if let Some(f) = m.get(k).and_then(Value::as_f64) {
                        if f.fract() == 0.0 && f.abs() < 9.0e15 {
                            m.insert(k.into(), (f as i64).into());
                        }
                    }
                }
            }
            for (_, x) in m.iter_mut() {
                finish_schema(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(finish_schema),
        _ => {}
    }
}

/// A CRD as the JSON document that is rendered (integer bounds written as integers: the typed
/// `JSONSchemaProps` holds them as `f64`).
pub fn document(crd: &impl serde::Serialize) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(crd)?;
    finish_schema(&mut v);
    Ok(v)
}

/// One CRD rendered as YAML, exactly as `crds/` holds it.
pub fn render(crd: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(to_yaml(&document(crd)?))
}

/// Runs `ferrolb crds`.
pub async fn run(args: Args) -> crate::CmdResult {
    match args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (file, crd) in all() {
                std::fs::write(dir.join(file), render(&crd)?)?;
            }
        }
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for (_, crd) in all() {
                // A closed pipe (`| head`) ends the output quietly instead of panicking.
                if write!(out, "---\n{}", render(&crd)?).is_err() {
                    break;
                }
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

// ----- YAML emitter ----------------------------------------------------------------------------

/// Renders a JSON value as block-style YAML that YAML 1.1 and 1.2 parsers read back identically:
/// ambiguous strings are double-quoted, multi-line strings use literal blocks (`|-`).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => emit_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => emit_seq(&mut out, a, 0),
        other => {
            out.push_str(&scalar(other, 0));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn emit_map(out: &mut String, m: &serde_json::Map<String, Value>, ind: usize) {
    for (i, (k, v)) in m.iter().enumerate() {
        // The first key of a map inside a sequence item follows "- " directly.
        if i > 0 || !out.ends_with("- ") {
            indent(out, ind);
        }
        out.push_str(&key(k));
        out.push(':');
        match v {
            Value::Object(c) if !c.is_empty() => {
                out.push('\n');
                emit_map(out, c, ind + 2);
            }
            Value::Array(c) if !c.is_empty() => {
                out.push('\n');
                emit_seq(out, c, ind);
            }
            other => {
                out.push(' ');
                out.push_str(&scalar(other, ind + 2));
                out.push('\n');
            }
        }
    }
}

fn emit_seq(out: &mut String, a: &[Value], ind: usize) {
    for v in a {
        indent(out, ind);
        out.push_str("- ");
        match v {
            Value::Object(c) if !c.is_empty() => emit_map(out, c, ind + 2),
            Value::Array(c) if !c.is_empty() => {
                out.push('\n');
                emit_seq(out, c, ind + 2);
            }
            other => {
                out.push_str(&scalar(other, ind + 2));
                out.push('\n');
            }
        }
    }
}

fn key(k: &str) -> String {
    if plain_ok(k) {
        k.to_string()
    } else {
        quoted(k)
    }
}

fn scalar(v: &Value, ind: usize) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            if plain_ok(s) {
                s.clone()
            } else if literal_ok(s) {
                let mut o = String::from("|-");
                for line in s.split('\n') {
                    o.push('\n');
                    if !line.is_empty() {
                        o.extend(std::iter::repeat_n(' ', ind));
                        o.push_str(line);
                    }
                }
                o
            } else {
                quoted(s)
            }
        }
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// JSON string syntax is a valid YAML double-quoted scalar in 1.1 and 1.2.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Multi-line text that a literal block keeps byte for byte.
fn literal_ok(s: &str) -> bool {
    s.contains('\n')
        && !s.ends_with('\n')
        && !s.starts_with([' ', '\t'])
        && !s.split('\n').any(|l| l.ends_with([' ', '\t']))
        && !s.chars().any(|c| c != '\n' && c.is_control())
}

/// YAML 1.1 implicit types (yaml.org/type: bool, null, int, float, timestamp, merge, value)
/// plus YAML 1.2 core; a plain scalar matching any of them would not read back as a string.
static IMPLICIT: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(concat!(
        r"^(?:",
        r"y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF",
        r"|~|null|Null|NULL",
        r"|[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?0o[0-7]+",
        r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+",
        r"|[-+]?(?:[0-9][0-9_]*)?\.[0-9.]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+",
        r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*",
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        r"|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}.*",
        r"|<<|=",
        r")$"
    ))
    .expect("static regex")
});

/// Whether `s` can be written as a plain scalar and read back as the same string by YAML 1.1 and
/// 1.2 parsers. Conservative: anything unusual is quoted.
fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_ascii_alphanumeric() || matches!(first, '_' | '.' | '/' | '(')) {
        return false;
    }
    if s.ends_with(' ') || IMPLICIT.is_match(s) {
        return false;
    }
    s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                ' ' | '_'
                    | '.'
                    | '/'
                    | '-'
                    | '('
                    | ')'
                    | '='
                    | ','
                    | ';'
                    | '\''
                    | '`'
                    | '+'
                    | '^'
                    | '$'
                    | '<'
                    | '>'
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(v: &Value) -> Value {
        serde_yaml::from_str(&to_yaml(v)).unwrap()
    }

    #[test]
    fn yaml_11_ambiguous_strings_are_quoted() {
        for s in [
            "No",
            "no",
            "Yes",
            "y",
            "n",
            "on",
            "Off",
            "null",
            "~",
            "0755",
            "1:30",
            "1e3",
            ".5",
            "-1",
            "0x1f",
            ".inf",
            "2026-11-22",
            "",
            " lead",
            "trail ",
            "a: b",
            "a #b",
            "*x",
            "&x",
            "!x",
            "- x",
            "{x}",
            "[x]",
            "%x",
            "@x",
            "|x",
            ">x",
            "'x",
            "\"x",
            "=",
            "<<",
        ] {
            let y = to_yaml(&serde_json::json!({ "k": s }));
            assert!(
                y.starts_with("k: \""),
                "{s:?} must be double-quoted, got {y:?}"
            );
            assert_eq!(roundtrip(&serde_json::json!({ "k": s }))["k"], s);
        }
        for s in [
            "Nope",
            "IPv4",
            "ferrolb.io",
            ".status.ipsTotal",
            "a b",
            "LB IPs",
        ] {
            assert_eq!(to_yaml(&serde_json::json!({ "k": s })), format!("k: {s}\n"));
        }
    }

    #[test]
    fn structures_round_trip() {
        let v = serde_json::json!({
            "a": [1, 2.5, true, null, "x", {"b": [], "c": {}}, [3, ["y"]]],
            "multi": "line one\nline two\n\nafter blank",
            "trailing\nnewline": "x\n",
            "m": {"n": {"o": ["p", {"q": "r", "s": "No"}]}},
        });
        assert_eq!(roundtrip(&v), v);
        assert!(to_yaml(&v).contains("multi: |-\n  line one\n  line two\n\n  after blank\n"));
    }

    #[test]
    fn crds_carry_golden_validation() {
        let (_, pool) = &all()[0];
        let v = document(pool).unwrap();
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let afl = &spec["properties"]["allowFirstLastIPs"];
        assert_eq!(afl["default"], "No");
        assert_eq!(afl["enum"], serde_json::json!(["Yes", "No"]));
        let op = &spec["properties"]["serviceSelector"]["properties"]["matchExpressions"]["items"]
            ["properties"]["operator"];
        assert_eq!(
            op["enum"],
            serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist"])
        );
        let status = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
        assert_eq!(
            status["properties"]["ipsTotal"]["minimum"],
            serde_json::json!(0)
        );
        assert!(status["properties"]["ipsTotal"]["minimum"].is_i64());
        assert_eq!(
            status["properties"]["conditions"]["items"]["properties"]["status"]["enum"],
            serde_json::json!(["True", "False", "Unknown"])
        );
        assert_eq!(
            v["spec"]["names"]["shortNames"],
            serde_json::json!(["lbpool"])
        );
    }

    #[test]
    fn rendered_crds_reparse_to_the_same_document_with_string_enums() {
        for (file, crd) in all() {
            let text = render(&crd).unwrap();
            let back: Value = serde_yaml::from_str(&text).unwrap();
            assert_eq!(back, document(&crd).unwrap(), "{file}");
        }
        let text = render(&all()[0].1).unwrap();
        assert!(text.contains("default: \"No\""), "default must be quoted");
        assert!(text.contains("- \"Yes\"\n"), "enum must be quoted");
    }

    /// The same check with a YAML 1.1 parser (PyYAML), when the machine has one.
    #[test]
    fn rendered_crds_reparse_with_a_yaml_11_parser() {
        let probe = std::process::Command::new("python3")
            .args(["-c", "import yaml"])
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            println!("skipped: python3 with PyYAML (a YAML 1.1 parser) not available");
            return;
        }
        for (file, crd) in all() {
            let text = render(&crd).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(file);
            std::fs::write(&path, &text).unwrap();
            let out = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
                ])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let back: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(back, document(&crd).unwrap(), "{file}");
        }
    }

    /// `crds/` must be what `ferrolb crds --out-dir crds` writes today.
    #[test]
    fn committed_crds_are_up_to_date() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
        for (file, crd) in all() {
            let want = render(&crd).unwrap();
            let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            assert!(
                have == want,
                "crds/{file} is stale: run `cargo run -- crds --out-dir crds` and commit it"
            );
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        names.sort();
        let mut want: Vec<String> = all().iter().map(|(f, _)| f.to_string()).collect();
        want.sort();
        assert_eq!(names, want, "crds/ holds a file no CRD generates");
    }
}
