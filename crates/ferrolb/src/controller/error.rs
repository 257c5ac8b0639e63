//! The controller's error type and `Result` alias (kube-rs controller-rs style).

/// Everything that can go wrong inside the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server answered with an error Status or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A write was refused because the object changed since we read it (HTTP 409).
    /// The caller refetches and re-evaluates; it never overwrites blindly.
    #[error("conflict writing {0}: the object changed since it was read")]
    Conflict(String),
    /// The lease was lost (or never held): writes are not allowed.
    #[error("not the leader: write to {0} suppressed")]
    NotLeader(String),
    /// Building a Kubernetes client from the kubeconfig / in-cluster environment failed.
    #[error("kubernetes client configuration: {0}")]
    Config(String),
    /// Serialising a patch failed (should not happen; reported instead of panicking).
    #[error("serialising {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A watch stream ended unexpectedly.
    #[error("watch on {0} ended")]
    WatchEnded(&'static str),
    /// Leader election failed in a way the controller cannot continue from.
    #[error("leader election: {0}")]
    Lease(String),
    /// The metrics/health endpoint could not be served.
    #[error("metrics endpoint: {0}")]
    Metrics(#[source] std::io::Error),
}

impl Error {
    /// Short label for the `ferrolb_controller_reconcile_errors_total{kind}` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(_)) => "api_status",
            Error::Kube(_) => "api_unreachable",
            Error::Conflict(_) => "conflict",
            Error::NotLeader(_) => "not_leader",
            Error::Config(_) => "config",
            Error::Serialize { .. } => "serialize",
            Error::WatchEnded(_) => "watch_ended",
            Error::Lease(_) => "lease",
            Error::Metrics(_) => "metrics",
        }
    }

    /// Whether this is a 409 Conflict from the API server (or already classified as one).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_))
            || matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 409)
    }

    /// Whether the API server answered 404 Not Found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 404)
    }
}

/// Result alias used throughout the controller.
pub type Result<T, E = Error> = std::result::Result<T, E>;
