//! Building the allocator from a whole cluster: the one order the controller (on taking
//! leadership) and `ferrolb plan` both follow, so they assign the same addresses.
//!
//! 1. every pool (in the order given; a later definition of the same name replaces it);
//! 2. every Service's existing `status.loadBalancer.ingress` is adopted, so no new allocation
//!    takes an address a Service already holds;
//! 3. every Service is ensured (what is missing is allocated).
//!
//! Services are adopted and ensured oldest first: by `creationTimestamp` (Services without
//! one, which only manifests lack, come first), then namespace/name.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::{AdoptReport, Allocator, PoolDef, ServiceKey, StoredReq};

/// One Service as the rebuild sees it.
#[derive(Clone, Debug)]
pub struct RebuildService<'a> {
    /// The request, shared with the caller's cache (kept by reference, not copied).
    pub req: &'a Arc<StoredReq>,
    /// `metadata.creationTimestamp`.
    pub created: Option<jiff::Timestamp>,
    /// The addresses in its `status.loadBalancer.ingress`, in order.
    pub ingress: Vec<IpAddr>,
}

impl RebuildService<'_> {
    /// The rebuild order's sort key: oldest first, then namespace/name.
    pub fn order(&self) -> (Option<jiff::Timestamp>, &ServiceKey) {
        (self.created, &self.req.key)
    }
}

impl Allocator {
    /// Pools → adopt → ensure (see the module docs). Namespaces are set before. Returns the
    /// adoption report of each Service that had addresses in its status.
    pub fn rebuild<'a>(
        &mut self,
        pools: impl IntoIterator<Item = PoolDef>,
        services: impl IntoIterator<Item = RebuildService<'a>>,
    ) -> BTreeMap<ServiceKey, AdoptReport> {
        for def in pools {
            self.set_pool(def);
        }
        let mut services: Vec<RebuildService<'a>> = services.into_iter().collect();
        services.sort_by(|a, b| a.order().cmp(&b.order()));
        let mut reports = BTreeMap::new();
        for s in &services {
            if !s.ingress.is_empty() {
                reports.insert(s.req.key.clone(), self.adopt_shared(s.req, &s.ingress));
            }
        }
        for s in &services {
            self.ensure_shared(s.req);
        }
        reports
    }
}
