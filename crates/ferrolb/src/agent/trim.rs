//! What the agent keeps of each watched `L2AnnouncementPolicy`: the whole object (its status is
//! written back from it, with its resourceVersion as precondition) except `managedFields`.
//!
//! Services, EndpointSlices and Nodes are not kept as Kubernetes objects at all: see
//! [`super::cache`] for the agent's own narrow types.

use crate::api::L2AnnouncementPolicy;

/// A policy is kept whole (its status is written back from it) except `managedFields`.
pub fn policy(p: &mut L2AnnouncementPolicy) {
    p.metadata.managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn policy_loses_only_managed_fields() {
        let mut p = L2AnnouncementPolicy::new("p", Default::default());
        p.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        p.metadata.resource_version = Some("7".into());
        let mut t = p.clone();
        policy(&mut t);
        assert!(t.metadata.managed_fields.is_none());
        p.metadata.managed_fields = None;
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::to_value(&p).unwrap()
        );
    }
}
