//! `lab --measure`'s controller figures: how long after the first of N Service creates every
//! one of them shows an address and the controller's condition in its status, and has its
//! `IPAllocated` Event — seen through two watches (Services, Events) opened before the first
//! create, so the figure is what a user would observe and costs the API server no polling.
//! The controllers' peak RSS is read next to it (`VmHWM`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::Api;
use kube::runtime::watcher;
use serde::Serialize;
use tokio::sync::watch;

use super::cluster::Cluster;

/// The controller's cold-start figures.
#[derive(Debug, Serialize, Default, Clone)]
pub struct Figures {
    /// Services created (and waited for).
    pub services: usize,
    /// Seconds from the first create until every one showed an address and the
    /// `ferrolb.io/IPAMRequestSatisfied` condition (None: not within the wait).
    pub all_addressed_s: Option<f64>,
    /// Seconds from the first create until every one had its `IPAllocated` Event.
    pub all_events_s: Option<f64>,
    /// Peak RSS (`VmHWM`) of each controller replica, KiB.
    pub controller_peak_rss_kib: Vec<u64>,
}

/// What the watches have seen so far.
#[derive(Clone, Copy, Default, Debug)]
struct Seen {
    addressed: usize,
    events: usize,
}

/// Watches started before the creates; [`Tracker::wait`] ends when both counts reach N.
pub struct Tracker {
    rx: watch::Receiver<Seen>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    n: usize,
}

/// Whether `name` is one of the measured Services.
fn measured(name: &str, prefix: &str) -> bool {
    name.starts_with(prefix)
}

/// Whether a Service shows an address and our condition (status `True`).
fn addressed(s: &Service) -> bool {
    let st = s.status.as_ref();
    let has_ip = st
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .is_some_and(|i| i.iter().any(|i| i.ip.is_some()));
    let satisfied = st.and_then(|st| st.conditions.as_ref()).is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == ferrolb::api::COND_IPAM_SATISFIED && c.status == "True")
    });
    has_ip && satisfied
}

impl Tracker {
    /// Opens the watches on Services and Events of `ns`; counts Services named `prefix…`.
    /// Returns once both watches have their initial lists, so no create can be missed.
    pub async fn start(c: &Cluster, ns: &str, prefix: &str, n: usize) -> anyhow::Result<Self> {
        let (tx, rx) = watch::channel(Seen::default());
        let tx = std::sync::Arc::new(tx);
        let mut tasks = Vec::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(2);

        let svcs: Api<Service> = Api::namespaced(c.client.clone(), ns);
        let (p, t, r) = (prefix.to_string(), tx.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut done: BTreeSet<String> = BTreeSet::new();
            let mut s = watcher::watcher(svcs, watcher::Config::default()).boxed();
            while let Some(ev) = s.next().await {
                let obj = match ev {
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => o,
                    Ok(watcher::Event::InitDone) => {
                        let _ = r.send(()).await;
                        continue;
                    }
                    _ => continue,
                };
                let name = obj.metadata.name.clone().unwrap_or_default();
                if measured(&name, &p) && addressed(&obj) && done.insert(name) {
                    t.send_modify(|s| s.addressed = done.len());
                }
            }
        }));

        let events: Api<Event> = Api::namespaced(c.client.clone(), ns);
        let (p, t, r) = (prefix.to_string(), tx, ready_tx);
        tasks.push(tokio::spawn(async move {
            let mut done: BTreeSet<String> = BTreeSet::new();
            let mut s = watcher::watcher(events, watcher::Config::default()).boxed();
            while let Some(ev) = s.next().await {
                let e = match ev {
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => o,
                    Ok(watcher::Event::InitDone) => {
                        let _ = r.send(()).await;
                        continue;
                    }
                    _ => continue,
                };
                if e.reason.as_deref() != Some(ferrolb::controller::events::reason::IP_ALLOCATED) {
                    continue;
                }
                let Some(name) = e.regarding.and_then(|r| r.name) else {
                    continue;
                };
                if measured(&name, &p) && done.insert(name) {
                    t.send_modify(|s| s.events = done.len());
                }
            }
        }));
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
                .await
                .map_err(|_| anyhow::anyhow!("the measuring watches got no initial list"))?;
        }
        Ok(Tracker { rx, tasks, n })
    }

    /// Waits (at most `within`) until all N Services are addressed and have their Event;
    /// times are taken from `first_create`.
    pub async fn wait(mut self, first_create: Instant, within: Duration) -> Figures {
        let mut f = Figures {
            services: self.n,
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = *self.rx.borrow_and_update();
            if f.all_addressed_s.is_none() && seen.addressed >= self.n {
                f.all_addressed_s = Some(first_create.elapsed().as_secs_f64());
            }
            if f.all_events_s.is_none() && seen.events >= self.n {
                f.all_events_s = Some(first_create.elapsed().as_secs_f64());
            }
            if f.all_addressed_s.is_some() && f.all_events_s.is_some() {
                break;
            }
            match tokio::time::timeout_at(deadline, self.rx.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        for t in &self.tasks {
            t.abort();
        }
        f
    }

    /// Counts so far (addressed, Events), for progress lines.
    pub fn seen(&self) -> (usize, usize) {
        let s = *self.rx.borrow();
        (s.addressed, s.events)
    }
}

/// The controllers' peak RSS, KiB.
pub fn controller_peak_rss(c: &Cluster) -> Vec<u64> {
    c.controllers
        .iter()
        .flatten()
        .filter_map(super::procs::Proc::peak_rss_kib)
        .collect()
}

/// One line for the narration.
pub fn summary(f: &Figures) -> String {
    let s = |v: Option<f64>| v.map_or("not within the wait".to_string(), |v| format!("{v:.1} s"));
    format!(
        "      controller: all {} Services addressed (status + condition) {} and all IPAllocated Events {} after the first create; controllers' peak RSS {:?} KiB",
        f.services,
        s(f.all_addressed_s),
        s(f.all_events_s),
        f.controller_peak_rss_kib
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb::fixtures::{condition, ServiceBuilder};

    fn svc(ip: Option<&str>, cond: Option<&str>) -> Service {
        let mut b = ServiceBuilder::default();
        if let Some(ip) = ip {
            b = b.ingress(&[ip]);
        }
        if let Some(status) = cond {
            b = b.condition(condition(
                ferrolb::api::COND_IPAM_SATISFIED,
                status,
                "Satisfied",
                "",
                jiff::Timestamp::UNIX_EPOCH,
            ));
        }
        b.build()
    }

    #[test]
    fn addressed_needs_an_address_and_our_satisfied_condition() {
        assert!(addressed(&svc(Some("2001:db8::1"), Some("True"))));
        assert!(!addressed(&svc(Some("2001:db8::1"), None)));
        assert!(!addressed(&svc(Some("2001:db8::1"), Some("False"))));
        assert!(!addressed(&svc(None, Some("True"))));
        assert!(!addressed(&Service::default()));
    }
}
