//! The one `events.k8s.io/v1` Event builder (controller and agent) and its poster.
//!
//! Every Event carries what the real API server's validation requires (golden transcripts
//! 73–75): `eventTime` (a MicroTime), `reportingController`, `reportingInstance` (at most 128
//! characters), `action`, `reason`, a valid `type` (`Normal`/`Warning`), `regarding` and a
//! `note` of at most 1 kB. The name is the regarding object's, a dot and a unique number in
//! hex (client-go's scheme), cut to the 253 characters a name may have. Events about
//! cluster-scoped objects go to the `default` namespace, as Kubernetes does.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// Longest `note` the API server accepts (1 kB).
const MAX_NOTE: usize = 1024;
/// Longest object name (DNS subdomain).
const MAX_NAME: usize = 253;
/// Longest `reportingInstance` the API server accepts.
const MAX_INSTANCE: usize = 128;

/// What an Event says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventText<'a> {
    /// `Normal` or `Warning`.
    pub type_: &'a str,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

/// Who reports an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reporter<'a> {
    /// `reportingController` (`ferrolb.io/controller`, `ferrolb.io/agent`).
    pub controller: &'a str,
    /// `reportingInstance` (a replica's identity, `ferrolb-agent-NODE`).
    pub instance: &'a str,
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[..at]
}

/// Builds the Event about `regarding`, at `now`; `unique` makes its name unique.
pub fn build(
    regarding: &ObjectReference,
    text: EventText<'_>,
    by: Reporter<'_>,
    now: jiff::Timestamp,
    unique: u64,
) -> Event {
    let ns = regarding
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let base = regarding.name.as_deref().unwrap_or("object");
    let suffix = format!(".{unique:016x}");
    let name = format!("{}{suffix}", cut(base, MAX_NAME - suffix.len()));
    let note = if text.note.len() > MAX_NOTE {
        format!("{}...", cut(text.note, MAX_NOTE - 3))
    } else {
        text.note.to_string()
    };
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        reporting_controller: Some(by.controller.to_string()),
        reporting_instance: Some(cut(by.instance, MAX_INSTANCE).to_string()),
        action: Some(text.action.to_string()),
        reason: Some(text.reason.to_string()),
        regarding: Some(regarding.clone()),
        note: Some(note),
        type_: Some(text.type_.to_string()),
        ..Default::default()
    }
}

/// Creates `ev` (errors are returned for the caller to log and count; Events are best effort).
pub async fn post(client: &kube::Client, ev: &Event) -> kube::Result<()> {
    let ns = ev.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), ev).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_notes_and_instances_are_cut_to_what_the_server_accepts() {
        let long = "é".repeat(300);
        let regarding = ObjectReference {
            name: Some(long.clone()),
            ..Default::default()
        };
        let ev = build(
            &regarding,
            EventText {
                type_: "Warning",
                reason: "R",
                action: "A",
                note: &long.repeat(4),
            },
            Reporter {
                controller: "ferrolb.io/agent",
                instance: &long,
            },
            jiff::Timestamp::UNIX_EPOCH,
            0x1f,
        );
        let name = ev.metadata.name.unwrap();
        assert!(
            name.len() <= MAX_NAME && name.ends_with(".000000000000001f"),
            "{name}"
        );
        assert_eq!(ev.metadata.namespace.as_deref(), Some("default"));
        let note = ev.note.unwrap();
        assert!(note.len() <= MAX_NOTE && note.ends_with("..."));
        assert!(ev.reporting_instance.unwrap().len() <= MAX_INSTANCE);
        assert_eq!(ev.reporting_controller.as_deref(), Some("ferrolb.io/agent"));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
    }
}
