//! Cost of one acquire + release in `pasv_pool::Pool`, per strategy, at 20, 1,000 and 64,000
//! ports with 0% and 99% of the ports cooling, beside the naive allocator many servers use:
//! scan the range from the bottom for a port that is neither leased nor still in its
//! quarantine, its cooling ports spread over the range as they are in use. Numbers are
//! written down in docs/CAPACITY.md ("Cost").
//!
//! `wait_queue`: the same acquire + release through `pasv_pool::wait::WaitQueue` with nobody
//! waiting (the server's path when a port is free), and one hand-over of a released port to
//! the oldest of W waiters (release, grant, and a new waiter joining), as pasvd runs them.
//!
//! `cargo bench -p pasv-benches --bench pool -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_main, BenchmarkId, Criterion};
use pasv_pool::wait::{Admission, WaitEvent, WaitQueue};
use pasv_pool::{AddrFilter, Closer, Instant, Pool, PoolConfig, PortSet, StrategyKind};

const SIZES: [u16; 3] = [20, 1_000, 64_000];
const COOLING: [u32; 2] = [0, 99];
const LOW: u16 = 1_024;

fn peer() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))
}

/// A pool of `n` ports with `cooling`% of them in a quarantine that outlasts the benchmark.
fn pool(strategy: StrategyKind, n: u16, cooling: u32) -> Pool {
    let config = PoolConfig::new(
        vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
        PortSet::range(LOW, LOW + n - 1).expect("valid range"),
    )
    .with_strategy(strategy)
    .with_quarantine(Duration::from_secs(1_000_000));
    let mut pool = Pool::new(config).expect("valid config");
    let leases: Vec<_> = (0..n)
        .map(|_| pool.acquire(Instant::ZERO, peer()).expect("free"))
        .collect();
    let cool = (u32::from(n) * cooling / 100) as usize;
    for (i, lease) in leases.into_iter().enumerate() {
        let closer = if i < cool {
            Closer::Server
        } else {
            Closer::Client
        };
        pool.release(lease, Instant::ZERO, closer)
            .expect("live lease");
    }
    pool
}

/// The naive allocator: per port, "leased" and "quarantined until"; acquire scans from the
/// lowest port. Its cooling ports are spread over the range (a seeded shuffle), as they are
/// in use: ports cool wherever transfers happened to end, and a range whose cooling ports all
/// sat below its free ones would make the scan as slow as it can be, by construction.
struct NaiveScan {
    leased: Vec<bool>,
    until: Vec<u64>,
}

impl NaiveScan {
    fn new(n: u16, cooling: u32) -> NaiveScan {
        let cool = (u32::from(n) * cooling / 100) as usize;
        // Fisher-Yates with xorshift64: the same spread on every run.
        let mut order: Vec<usize> = (0..usize::from(n)).collect();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut until = vec![0; usize::from(n)];
        for &port in &order[..cool] {
            until[port] = u64::MAX;
        }
        NaiveScan {
            leased: vec![false; usize::from(n)],
            until,
        }
    }

    fn acquire(&mut self, now: u64) -> Option<usize> {
        let i = (0..self.leased.len()).find(|&i| !self.leased[i] && self.until[i] <= now)?;
        self.leased[i] = true;
        Some(i)
    }

    fn release(&mut self, i: usize) {
        self.leased[i] = false;
    }
}

fn acquire_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire_release");
    let now = Instant::from_nanos(1);
    for &n in &SIZES {
        for &cooling in &COOLING {
            // Ids as `cargo xtask bench` checks them: acquire_release/lrr/64000-cooling99.
            let param = format!("{n}-cooling{cooling}");
            for strategy in StrategyKind::ALL {
                let mut p = pool(strategy, n, cooling);
                group.bench_function(BenchmarkId::new(strategy.name(), &param), |b| {
                    b.iter(|| {
                        let lease = p
                            .acquire(black_box(now), black_box(peer()))
                            .expect("a free port");
                        p.release(lease, now, Closer::Client).expect("live lease");
                    })
                });
            }
            let mut naive = NaiveScan::new(n, cooling);
            group.bench_function(BenchmarkId::new("naive-scan", &param), |b| {
                b.iter(|| {
                    let i = naive.acquire(black_box(1)).expect("a free port");
                    naive.release(black_box(i));
                })
            });
        }
    }
    group.finish();
}

fn wait_queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("wait_queue");
    let now = Instant::from_nanos(1);
    let far = Instant::from_nanos(u64::MAX / 2);
    for &cooling in &COOLING {
        let mut q: WaitQueue<()> = WaitQueue::new(
            pool(StrategyKind::LeastRecentlyReleased, 1_000, cooling),
            1_024,
        );
        let param = format!("1000-cooling{cooling}");
        group.bench_function(BenchmarkId::new("acquire_release", &param), |b| {
            b.iter(|| {
                let Admission::Leased(lease) =
                    q.acquire(black_box(now), black_box(peer()), AddrFilter::Any, now, ())
                else {
                    panic!("a free port");
                };
                q.release(lease, now, Closer::Client).expect("live lease");
            })
        });
    }
    for waiters in [1usize, 64, 1_024] {
        // One port, leased; `waiters` sessions wait for it.
        let mut q: WaitQueue<()> =
            WaitQueue::new(pool(StrategyKind::LeastRecentlyReleased, 1, 0), waiters + 1);
        let Admission::Leased(first) = q.acquire(now, peer(), AddrFilter::Any, far, ()) else {
            panic!("a free port");
        };
        for _ in 0..waiters {
            let _ = q.acquire(now, peer(), AddrFilter::Any, far, ());
        }
        let mut held = Some(first);
        group.bench_function(BenchmarkId::new("hand_over", waiters), |b| {
            b.iter(|| {
                let lease = held.take().expect("the port is leased");
                q.release(lease, now, Closer::Client).expect("live lease");
                let Some(WaitEvent::Granted { lease, .. }) = q.poll_event() else {
                    panic!("the oldest waiter gets the port");
                };
                held = Some(lease);
                let _ = black_box(q.acquire(now, peer(), AddrFilter::Any, far, ()));
            })
        });
    }
    group.finish();
}

/// The benchmark group, written out: `criterion_group!` would generate an undocumented
/// `pub fn`, which the workspace's `missing_docs` lint rejects.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    acquire_release(&mut c);
    wait_queue(&mut c);
}

criterion_main!(benches);
