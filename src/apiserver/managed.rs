//! `metadata.managedFields` bookkeeping and server-side apply.

use serde_json::Value;

/// A server-side apply conflict: (field path, conflicting manager) pairs.
#[derive(Debug, Clone)]
pub struct ApplyConflict {
    /// `(path, manager)`, e.g. `(".spec.ports[port=80,protocol=\"TCP\"].targetPort", "one")`.
    pub causes: Vec<(String, String)>,
}

/// Records in `new.metadata.managedFields` the fields `manager` changed from `old` to `new`.
pub fn update_managed_fields(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    operation: &str,
    api_version: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let _ = (old, new, manager, operation, api_version, subresource, now);
}

/// Server-side apply of `applied` onto `live` by `manager`.
pub fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    subresource: Option<&str>,
    now: &str,
) -> Result<Value, ApplyConflict> {
    let _ = (live, applied, manager, force, api_version, subresource, now);
    Err(ApplyConflict { causes: Vec::new() })
}
