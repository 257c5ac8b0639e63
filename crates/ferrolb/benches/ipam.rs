//! Allocator throughput: 10k Services over pools of ≥ 65k addresses (documentation ranges only).
//!
//! `cargo bench --bench ipam`. Pools: 2001:db8:100::/112 (65,536), 2001:db8:200::/64, and the
//! three IPv4 documentation /24s. Each iteration starts from an allocator that already has the
//! pools and allocates (or adopts) 10,000 Services; throughput is reported per Service.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ferrolb::api::IpBlock;
use ferrolb::ipam::{Allocator, Family, FamilyPolicy, PoolDef, ServiceReq};

const N: usize = 10_000;

fn cidr(c: &str) -> IpBlock {
    IpBlock {
        cidr: Some(c.into()),
        ..Default::default()
    }
}

fn pools() -> Allocator {
    let mut a = Allocator::new();
    a.set_pool(PoolDef::new("a-v6-112", &[cidr("2001:db8:100::/112")]));
    a.set_pool(PoolDef::new("b-v6-64", &[cidr("2001:db8:200::/64")]));
    a.set_pool(PoolDef::new(
        "c-v4",
        &[
            cidr("192.0.2.0/24"),
            cidr("198.51.100.0/24"),
            cidr("203.0.113.0/24"),
        ],
    ));
    a
}

fn reqs(family: Option<Family>, policy: FamilyPolicy) -> Vec<ServiceReq> {
    (0..N)
        .map(|i| {
            let mut r = ServiceReq::new(&format!("ns{}", i % 50), &format!("svc-{i}"));
            if let Some(f) = family {
                r.families = vec![f];
            } else {
                r.families = vec![Family::V4, Family::V6];
            }
            r.policy = policy;
            r
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipam");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);

    let v6 = reqs(Some(Family::V6), FamilyPolicy::SingleStack);
    g.bench_function("ensure_10k_ipv6", |b| {
        b.iter_batched(
            pools,
            |mut a| {
                for r in &v6 {
                    black_box(a.ensure(r));
                }
                a
            },
            BatchSize::LargeInput,
        )
    });

    // IPv4 runs out after 762 Services (3 × 254); the rest get IPv6 only.
    let dual = reqs(None, FamilyPolicy::PreferDualStack);
    g.bench_function("ensure_10k_prefer_dual_stack", |b| {
        b.iter_batched(
            pools,
            |mut a| {
                for r in &dual {
                    black_box(a.ensure(r));
                }
                a
            },
            BatchSize::LargeInput,
        )
    });

    // Restart recovery: adopt 10k existing allocations, then ensure them (no new addresses).
    let mut seeded = pools();
    let held: Vec<Vec<IpAddr>> = v6.iter().map(|r| seeded.ensure(r).ips()).collect();
    g.bench_function("adopt_then_ensure_10k", |b| {
        b.iter_batched(
            pools,
            |mut a| {
                for (r, ips) in v6.iter().zip(&held) {
                    black_box(a.adopt(r, ips));
                }
                for r in &v6 {
                    black_box(a.ensure(r));
                }
                a
            },
            BatchSize::LargeInput,
        )
    });

    // Steady-state churn on a populated allocator: release one Service and allocate it again.
    g.throughput(Throughput::Elements(1));
    let mut full = pools();
    for r in &v6 {
        full.ensure(r);
    }
    let mut i = 0usize;
    g.bench_function("release_and_ensure_in_10k", |b| {
        b.iter(|| {
            let r = &v6[i % N];
            i += 7919;
            full.release(&r.key);
            black_box(full.ensure(r))
        })
    });
    g.finish();
}

/// CPU time this thread has spent on a CPU (`/proc/thread-self/schedstat`, first field, ns).
/// The kernel updates it at scheduler ticks (here every 4 ms), so one 10k-Service sample is
/// coarse; criterion's estimate over hundreds of samples is not biased by it.
/// The CI machine is shared (2 cores, many compilers): wall-clock figures swing with the load,
/// on-CPU time does not, so the `ipam-cpu` group reports throughput per CPU second.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn bench_cpu(c: &mut Criterion) {
    if thread_cpu().is_none() {
        eprintln!("skipped ipam-cpu: /proc/thread-self/schedstat not available");
        return;
    }
    let mut g = c.benchmark_group("ipam-cpu");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    let v6 = reqs(Some(Family::V6), FamilyPolicy::SingleStack);
    // On-CPU time of `per_service` over all 10k Services, each sample on fresh pools.
    let cpu_case = |b: &mut criterion::Bencher<'_>,
                    per_service: &dyn Fn(&mut Allocator, &ServiceReq)| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut a = pools();
                let t0 = thread_cpu().unwrap_or_default();
                for r in &v6 {
                    per_service(&mut a, r);
                }
                total += thread_cpu().unwrap_or_default().saturating_sub(t0);
                drop(a);
            }
            total
        })
    };
    g.bench_function("ensure_10k_ipv6", |b| {
        cpu_case(b, &|a, r| {
            black_box(a.ensure(r));
        })
    });
    // `ensure` builds the public `Outcome` (address strings, message) only when it is read; this
    // case reads it for every Service, as a caller writing each status right away would.
    g.bench_function("ensure_10k_ipv6_read_outcome", |b| {
        cpu_case(b, &|a, r| {
            black_box(a.ensure(r).message.len());
        })
    });
    g.finish();
}

criterion_group!(benches, bench, bench_cpu);
criterion_main!(benches);
