//! Reconcile benchmark: 100 and 1,000 Tenants against the in-memory API
//! server, first reconcile and no-op reconcile.
//!
//! Run: `cargo bench -p bulkhead-operator --bench reconcile`
//!
//! Reports, per reconcile, the CPU time of the thread that runs everything
//! (the controller AND the in-memory API server, which serialises and
//! merges JSON like a real one would not on our side: an upper bound for the
//! operator's own cost) and the API requests: reads, object writes and
//! Event writes. Checks the targets: a no-op reconcile writes nothing; a
//! first reconcile makes at most one apply per child plus one status write.

#[path = "../tests/reconcile_support/mod.rs"]
mod reconcile_support;

use std::process::ExitCode;
use std::time::Duration;

use reconcile_support::{World, tenant, world};

/// Number of children of one Tenant (one apply each at most).
const CHILDREN: usize = 9;

/// CPU time of the current thread, from the scheduler's accounting.
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanos = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(nanos)
}

#[derive(Default)]
struct Pass {
    cpu: Duration,
    reads: usize,
    writes: usize,
    events: usize,
    max_writes: usize,
}

async fn pass(w: &World, names: &[String]) -> Pass {
    let mut totals = Pass::default();
    for name in names {
        // Fetching the Tenant stands in for the watch; not counted.
        let started = thread_cpu();
        let done = w.reconcile(name).await;
        totals.cpu += thread_cpu() - started;
        if let Err(error) = done.result {
            panic!("reconcile of {name} failed: {error}");
        }
        totals.reads += done.reads;
        totals.writes += done.writes;
        totals.events += done.events;
        totals.max_writes = totals.max_writes.max(done.writes);
    }
    totals
}

fn row(label: &str, n: usize, p: &Pass) {
    let per = |x: usize| x as f64 / n as f64;
    println!(
        "{label:<22} {n:>6} {:>12.1} {:>8.2} {:>8.2} {:>8.2} {:>10}",
        p.cpu.as_secs_f64() * 1e6 / n as f64,
        per(p.reads),
        per(p.writes),
        per(p.events),
        p.max_writes
    );
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        println!(
            "{:<22} {:>6} {:>12} {:>8} {:>8} {:>8} {:>10}",
            "pass", "tenants", "cpu µs/rec", "reads", "writes", "events", "max writes"
        );
        let mut ok = true;
        for n in [100, 1_000] {
            let names: Vec<String> = (0..n).map(|i| format!("tenant-{i:04}")).collect();
            let w = world(names.iter().map(|name| tenant(name, "Delete")).collect()).await;
            let first = pass(&w, &names).await;
            row("first reconcile", n, &first);
            // The status written by the first pass triggers one more
            // reconcile in a real controller; from then on nothing changes.
            let noop = pass(&w, &names).await;
            row("no-op reconcile", n, &noop);
            if noop.writes + noop.events != 0 {
                eprintln!(
                    "FAIL: a no-op reconcile wrote ({} writes, {} events)",
                    noop.writes, noop.events
                );
                ok = false;
            }
            if first.max_writes > CHILDREN + 1 {
                eprintln!(
                    "FAIL: a first reconcile made {} writes (> {CHILDREN} applies + 1 status)",
                    first.max_writes
                );
                ok = false;
            }
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}
