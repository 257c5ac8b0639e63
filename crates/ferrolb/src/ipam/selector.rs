//! Kubernetes label selectors (`matchLabels` + `matchExpressions` with `In`, `NotIn`, `Exists`,
//! `DoesNotExist`), evaluated like `metav1.LabelSelectorAsSelector`: an unset selector is handled
//! by the caller (pools and policies treat it as "everything"), an empty selector `{}` matches
//! everything, requirements are ANDed. Invalid selectors (unknown operator, `In` without values,
//! `Exists` with values, malformed keys or values) are an error, never a panic — callers turn them
//! into a status condition.
//!
//! Reused by the agent for `L2AnnouncementPolicy` service and node selectors.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::{LABEL_SERVICE_NAME, LABEL_SERVICE_NAMESPACE};

/// Why a selector is invalid. The message names the offending field
/// (`matchExpressions[1].values`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SelectorError {
    /// Path inside the selector, e.g. `matchExpressions[0].operator`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A validated selector, cheap to evaluate many times.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    reqs: Vec<(String, Op)>,
}

impl Selector {
    /// Selector matching everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Validates and compiles `sel`.
    pub fn compile(sel: &LabelSelector) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if let Some(ml) = &sel.match_labels {
            for (k, v) in ml {
                let field = format!("matchLabels[{k:?}]");
                check_key(k).map_err(|m| SelectorError {
                    field: field.clone(),
                    message: m,
                })?;
                check_value(v).map_err(|m| SelectorError { field, message: m })?;
                reqs.push((k.clone(), Op::In(vec![v.clone()])));
            }
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let at = |f: &str| format!("matchExpressions[{i}].{f}");
            check_key(&e.key).map_err(|m| SelectorError {
                field: at("key"),
                message: m,
            })?;
            let values = e.values.clone().unwrap_or_default();
            for v in &values {
                check_value(v).map_err(|m| SelectorError {
                    field: at("values"),
                    message: m,
                })?;
            }
            let op = match e.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        return Err(SelectorError {
                            field: at("values"),
                            message: format!("must be non-empty when operator is {}", e.operator),
                        });
                    }
                    if e.operator == "In" {
                        Op::In(values)
                    } else {
                        Op::NotIn(values)
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        return Err(SelectorError {
                            field: at("values"),
                            message: format!("must be empty when operator is {}", e.operator),
                        });
                    }
                    if e.operator == "Exists" {
                        Op::Exists
                    } else {
                        Op::DoesNotExist
                    }
                }
                other => {
                    return Err(SelectorError {
                        field: at("operator"),
                        message: format!(
                            "{other:?} is not a valid operator (In, NotIn, Exists, DoesNotExist)"
                        ),
                    })
                }
            };
            reqs.push((e.key.clone(), op));
        }
        Ok(Selector { reqs })
    }

    /// Compiles an optional selector; unset = everything.
    pub fn compile_opt(sel: Option<&LabelSelector>) -> Result<Self, SelectorError> {
        sel.map_or(Ok(Self::everything()), Self::compile)
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Whether the labels answered by `label` (key → value) satisfy every requirement; for
    /// label sets that are not stored as a map (the allocator answers the virtual Service labels
    /// from the Service key).
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.reqs.iter().all(|(k, op)| {
            let v = label(k);
            let listed = |vals: &[String], v: &str| vals.iter().any(|x| x == v);
            match op {
                Op::In(vals) => v.is_some_and(|v| listed(vals, v)),
                Op::NotIn(vals) => v.is_none_or(|v| !listed(vals, v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
            }
        })
    }

    /// Whether this selector matches everything.
    pub fn is_everything(&self) -> bool {
        self.reqs.is_empty()
    }
}

/// Evaluates `sel` against `labels` (unset = everything). The reusable one-shot form.
pub fn matches(
    sel: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    Ok(Selector::compile_opt(sel)?.matches(labels))
}

/// A Service's labels plus the virtual labels `io.kubernetes.service.namespace` and
/// `io.kubernetes.service.name` (which override real labels of the same key).
pub fn service_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut l = svc.metadata.labels.clone().unwrap_or_default();
    l.insert(
        LABEL_SERVICE_NAMESPACE.to_string(),
        svc.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
    );
    l.insert(
        LABEL_SERVICE_NAME.to_string(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    l
}

/// Label key: optional DNS-subdomain prefix + `/` + name (≤ 63 chars, alphanumeric at both ends,
/// `-_.` inside).
fn check_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "key {k:?}: prefix must be a DNS subdomain (lowercase alphanumerics, '-', '.')"
            ));
        }
    }
    if name.is_empty() {
        return Err(format!("key {k:?}: name part must not be empty"));
    }
    check_name(name).map_err(|m| format!("key {k:?}: {m}"))
}

/// Label value: empty, or ≤ 63 chars, alphanumeric at both ends, `-_.` inside.
fn check_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    check_name(v).map_err(|m| format!("value {v:?}: {m}"))
}

fn check_name(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be at most 63 characters".into());
    }
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    if !b.first().is_some_and(alnum) || !b.last().is_some_and(alnum) {
        return Err("must start and end with an alphanumeric character".into());
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err("may contain only alphanumerics, '-', '_' and '.'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("lb-pool", "app")])),
            match_expressions: Some(vec![
                expr("tier", "In", &["web", "api"]),
                expr("legacy", "DoesNotExist", &[]),
                expr("env", "NotIn", &["dev"]),
            ]),
        };
        let s = Selector::compile(&sel).unwrap();
        assert!(s.matches(&labels(&[("lb-pool", "app"), ("tier", "web")])));
        assert!(s.matches(&labels(&[
            ("lb-pool", "app"),
            ("tier", "api"),
            ("env", "prod")
        ])));
        assert!(!s.matches(&labels(&[("lb-pool", "app"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("tier", "web")])));
        assert!(!s.matches(&labels(&[
            ("lb-pool", "app"),
            ("tier", "web"),
            ("legacy", "")
        ])));
        assert!(!s.matches(&labels(&[
            ("lb-pool", "app"),
            ("tier", "web"),
            ("env", "dev")
        ])));
    }

    #[test]
    fn exists_and_empty_selector() {
        let s = Selector::compile(&LabelSelector {
            match_expressions: Some(vec![expr("a", "Exists", &[])]),
            ..Default::default()
        })
        .unwrap();
        assert!(s.matches(&labels(&[("a", "")])));
        assert!(!s.matches(&labels(&[("b", "x")])));
        assert!(Selector::compile(&LabelSelector::default())
            .unwrap()
            .matches(&labels(&[])));
        assert!(matches(None, &labels(&[])).unwrap());
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let bad_op = LabelSelector {
            match_expressions: Some(vec![expr("a", "Has", &["x"])]),
            ..Default::default()
        };
        let e = Selector::compile(&bad_op).unwrap_err();
        assert_eq!(e.field, "matchExpressions[0].operator");
        let in_empty = LabelSelector {
            match_expressions: Some(vec![expr("a", "Exists", &[]), expr("b", "In", &[])]),
            ..Default::default()
        };
        assert_eq!(
            Selector::compile(&in_empty).unwrap_err().field,
            "matchExpressions[1].values"
        );
        let exists_vals = LabelSelector {
            match_expressions: Some(vec![expr("a", "Exists", &["x"])]),
            ..Default::default()
        };
        assert!(Selector::compile(&exists_vals).is_err());
        let bad_key = LabelSelector {
            match_labels: Some(labels(&[("-bad", "x")])),
            ..Default::default()
        };
        assert!(Selector::compile(&bad_key)
            .unwrap_err()
            .field
            .starts_with("matchLabels"));
        let bad_val = LabelSelector {
            match_labels: Some(labels(&[("ok", "not ok")])),
            ..Default::default()
        };
        assert!(matches(Some(&bad_val), &labels(&[])).is_err());
        assert!(Selector::compile(&LabelSelector {
            match_labels: Some(labels(&[(
                "io.kubernetes.service.namespace",
                "kube-system"
            )])),
            ..Default::default()
        })
        .is_ok());
    }

    #[test]
    fn virtual_labels_are_added() {
        let mut svc = Service::default();
        svc.metadata.name = Some("clustermesh-apiserver".into());
        svc.metadata.namespace = Some("kube-system".into());
        let l = service_labels(&svc);
        assert_eq!(l[LABEL_SERVICE_NAMESPACE], "kube-system");
        assert_eq!(l[LABEL_SERVICE_NAME], "clustermesh-apiserver");
    }
}
