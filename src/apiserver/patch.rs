//! Patch engines of the API stand-in: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! Kubernetes strategic merge patch.

use serde_json::Value;

/// Why a patch could not be applied; each variant maps to an HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchError {
    /// 422 Unprocessable Entity.
    Invalid(String),
    /// 409 Conflict.
    Conflict(String),
    /// 415 Unsupported Media Type.
    Unsupported(String),
    /// 400 Bad Request.
    BadRequest(String),
}

/// Applies an RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let _ = (target, patch);
}

/// Applies an RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), PatchError> {
    let _ = (target, ops);
    Err(PatchError::BadRequest("not yet implemented".into()))
}

/// Applies a Kubernetes strategic merge patch for objects of `kind`.
pub fn strategic_merge_patch(
    target: &mut Value,
    patch: &Value,
    kind: &str,
) -> Result<(), PatchError> {
    let _ = (target, patch, kind);
    Err(PatchError::BadRequest("not yet implemented".into()))
}
