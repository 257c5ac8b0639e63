//! `lab --chaos` in the suite (issue 15): two fixed seeds, ≈ 55 s of random faults each on one
//! lab (3 nodes, 2 controllers, the stand-in), zero invariant violations. Root only (network
//! namespaces); skipped with a message otherwise.
//!
//! Robust on a loaded 2-core machine: every bound is built from the lab's configured timings
//! (lease 2 s, retry 250 ms, rank step 100 ms) plus a documented slack (`observe::Bounds`), and
//! the test also asserts that the observers saw enough for "no violations" to mean something.

use std::time::Duration;

use ferrolb_lab::lab::chaos::{report, run_on, Opts};
use ferrolb_lab::lab::cluster::{Cluster, LabConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_two_fixed_seeds_no_violations() {
    if !ferrolb_lab::netns::is_root() {
        eprintln!("skipped: needs root (the chaos lab runs in network namespaces)");
        return;
    }
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ferrolb"));
    let cfg = LabConfig::new("chs", 3, exe);
    let mut c = Cluster::start_all(cfg).await.expect("lab cluster starts");
    for (name, text) in ferrolb_lab::lab::EMBEDDED_MANIFESTS {
        if *name != "echo.yaml" {
            c.apply_yaml(text).await.expect(name);
        }
    }
    let say = |s: String| eprintln!("{s}");
    let mut failures = Vec::new();
    for seed in [15, 1015] {
        let o = Opts::new(seed, Duration::from_secs(55));
        let (r, start) = run_on(&mut c, &o, &say).await.expect("chaos run");
        for l in report::table(&r, start) {
            eprintln!("{l}");
        }
        // The observers worked: HTTP probes on both addresses (10/s each), the client's ARP
        // requests (4/s per address) captured on the bridge, with answers, API snapshots.
        assert!(r.observed.probes > 600, "seed {seed}: {:?}", r.observed);
        assert!(
            r.observed.arp_requests > 200,
            "seed {seed}: {:?}",
            r.observed
        );
        assert!(
            r.observed.arp_replies > 100,
            "seed {seed}: {:?}",
            r.observed
        );
        assert!(r.observed.snapshots > 5, "seed {seed}: {:?}", r.observed);
        // A lossy link really lost frames (the wires count what they drop).
        if r.faults.get("loss-delay").is_some_and(|n| *n > 0) {
            assert!(r.observed.wire_dropped > 0, "seed {seed}: {:?}", r.observed);
        }
        let injected: usize = r.faults.values().sum();
        assert!(injected >= 10, "seed {seed}: only {injected} faults");
        assert!(
            r.injection_errors.is_empty(),
            "seed {seed}: {:?}",
            r.injection_errors
        );
        if !r.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {}",
                serde_json::to_string_pretty(&r.violations).unwrap()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "violations (logs: {}):\n{}",
        c.dir().display(),
        failures.join("\n")
    );
    let _ = std::fs::remove_dir_all(c.dir());
}
