//! Scale run (a measurement, not a test): many Tenants created at once
//! against the real control plane with simulated pods (kube-scheduler and
//! kwok), then a no-op resync of all of them.
//!
//!   envtest-scale [--tenants N] [--nodes K] [--create-concurrency C]
//!                 [--timeout-seconds S]
//!
//! Needs `BULKHEAD_ENVTEST_BIN` (tests/envtest/build.sh) and the
//! bulkhead-operator binary (see tests/envtest/run.sh); the README's
//! benchmark section shows the command. Prints, as Markdown:
//!
//! - time from the first create until every Tenant reports `Ready=True` for
//!   its current generation;
//! - the operator's API requests per Tenant until then, by verb and
//!   resource, from the API server's audit log (the Lease renewals of leader
//!   election are counted apart: they depend on time, not on Tenants);
//! - the no-op resync: the operator is restarted (SIGTERM; a new replica
//!   takes the Lease and reconciles every Tenant once, as after an upgrade;
//!   the periodic resync is an hour), and its requests per Tenant;
//! - peak RSS and CPU time of the operator, kube-apiserver and etcd
//!   (`/proc/<pid>/status` VmHWM, `/proc/<pid>/stat` utime + stime).
//!
//! Exits non-zero if the resync wrote anything other than the Lease, or a
//! Tenant did not become Ready in time.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bulkhead_crds::Tenant;
use bulkhead_envtest::tenants::example;
use bulkhead_envtest::{AuditEvent, ControlPlane, OPERATOR_USER, OperatorOptions, Options};
use futures::StreamExt;
use kube::Api;
use kube::api::{ListParams, PostParams};

struct Args {
    tenants: usize,
    nodes: usize,
    create_concurrency: usize,
    timeout: Duration,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        tenants: 1000,
        nodes: 4,
        create_concurrency: 32,
        timeout: Duration::from_secs(1800),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .with_context(|| format!("{flag} {value:?} is not a number"))?;
        let number_usize = usize::try_from(number)?;
        match flag.as_str() {
            "--tenants" => args.tenants = number_usize,
            "--nodes" => args.nodes = number_usize,
            "--create-concurrency" => args.create_concurrency = number_usize.max(1),
            "--timeout-seconds" => args.timeout = Duration::from_secs(number),
            other => bail!(
                "unknown argument {other:?}; usage: envtest-scale [--tenants N] [--nodes K] \
                 [--create-concurrency C] [--timeout-seconds S]"
            ),
        }
    }
    Ok(args)
}

/// CPU time and memory of one process, from `/proc`.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    /// utime + stime, seconds.
    cpu_seconds: f64,
    /// VmHWM (peak resident set), MiB.
    peak_rss_mib: f64,
    /// VmRSS, MiB.
    rss_mib: f64,
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn usage(pid: u32, ticks: f64) -> Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses): state is
    // field 3, utime 14 and stime 15 (proc(5)).
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Ok(Usage {
        cpu_seconds: (utime + stime) / ticks,
        peak_rss_mib: kib("VmHWM:") / 1024.0,
        rss_mib: kib("VmRSS:") / 1024.0,
    })
}

/// `GET path` on a plain-HTTP loopback listener (the operator's admin port).
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Sum of `bulkhead_operator_reconciles_total` over its outcomes.
fn reconciles_total(addr: SocketAddr) -> Result<f64> {
    let metrics = http_get(addr, "/metrics")?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("bulkhead_operator_reconciles_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum())
}

fn is_lease(event: &AuditEvent) -> bool {
    event.object().resource == "leases"
}

/// The operator's requests, by `verb resource[/subresource]`.
fn by_kind(events: &[&AuditEvent]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in events {
        let object = event.object();
        let resource = if object.subresource.is_empty() {
            object.resource
        } else {
            format!("{}/{}", object.resource, object.subresource)
        };
        *counts
            .entry(format!("{} {resource}", event.verb))
            .or_default() += 1;
    }
    counts
}

fn print_requests(title: &str, events: &[&AuditEvent], tenants: usize) {
    let total = events.iter().filter(|e| !is_lease(e)).count();
    let writes = events
        .iter()
        .filter(|e| !is_lease(e) && e.is_write())
        .count();
    let leases = events.iter().filter(|e| is_lease(e)).count();
    println!("\n### {title}\n");
    println!(
        "operator requests: {total} ({:.2} per Tenant), of which writes {writes} ({:.2} per Tenant); \
         Lease requests (leader election, not per Tenant): {leases}\n",
        total as f64 / tenants as f64,
        writes as f64 / tenants as f64
    );
    println!("| request | count | per Tenant |\n|---|---|---|");
    for (kind, count) in by_kind(events) {
        println!(
            "| {kind} | {count} | {:.2} |",
            count as f64 / tenants as f64
        );
    }
}

async fn ready_count(tenants: &Api<Tenant>) -> Result<usize> {
    let list = tenants
        .list(&ListParams::default().labels("bulkhead.dev/scale-run=true"))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|t| {
            t.status.as_ref().is_some_and(|s| {
                s.observed_generation == t.metadata.generation
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count())
}

/// Waits until the operator made no request for `quiet`, at most `limit`.
fn wait_operator_quiet(cp: &ControlPlane, quiet: Duration, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut last_count = usize::MAX;
    let mut since = Instant::now();
    let mark = cp.audit().mark()?;
    while Instant::now() < deadline {
        let count = cp
            .audit()
            .since(mark)?
            .iter()
            .filter(|e| e.username() == OPERATOR_USER && !is_lease(e))
            .count();
        if count != last_count {
            last_count = count;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("the operator was still busy after {limit:?}")
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let ticks = clock_ticks_per_second();
    let started = Instant::now();
    let cp = ControlPlane::start(&Options::with_pods(args.nodes))?;
    let installation = cp.install_bulkhead();
    let operator = installation.operator();
    // etcd, kube-apiserver, kube-controller-manager, watchdog, ...
    let pids = cp.pids();
    let (etcd, apiserver) = (pids[0], pids[1]);
    eprintln!(
        "control plane and operator up in {:.1} s; creating {} Tenants",
        started.elapsed().as_secs_f64(),
        args.tenants
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let base = [
        usage(operator.process().pid(), ticks)?,
        usage(apiserver, ticks)?,
        usage(etcd, ticks)?,
    ];

    // Phase 1: N Tenants at once, until all are Ready.
    let mark = cp.audit().mark()?;
    let create_started = Instant::now();
    let ready_after = runtime.block_on(async {
        let admin = cp.admin_client().await?;
        let tenants: Api<Tenant> = Api::all(admin);
        let template = example("minimal.yaml", "scale")?;
        let results: Vec<Result<()>> = futures::stream::iter(0..args.tenants)
            .map(|i| {
                let tenants = tenants.clone();
                let mut tenant = template.clone();
                tenant.metadata.name = Some(format!("scale-{i:04}"));
                tenant
                    .metadata
                    .labels
                    .get_or_insert_default()
                    .insert("bulkhead.dev/scale-run".to_owned(), "true".to_owned());
                async move {
                    tenants
                        .create(&PostParams::default(), &tenant)
                        .await
                        .map(drop)
                        .context("create a Tenant")
                }
            })
            .buffer_unordered(args.create_concurrency)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>>>()?;
        eprintln!(
            "created {} Tenants in {:.1} s",
            args.tenants,
            create_started.elapsed().as_secs_f64()
        );
        let deadline = create_started + args.timeout;
        let mut last_report = Instant::now();
        loop {
            let ready = ready_count(&tenants).await?;
            if ready == args.tenants {
                return anyhow::Ok(create_started.elapsed());
            }
            if last_report.elapsed() > Duration::from_secs(15) {
                eprintln!(
                    "{:>6.0} s: {ready}/{} Ready",
                    create_started.elapsed().as_secs_f64(),
                    args.tenants
                );
                last_report = Instant::now();
            }
            if Instant::now() > deadline {
                bail!(
                    "only {ready} of {} Tenants Ready after {:?}",
                    args.tenants,
                    args.timeout
                );
            }
            operator.process().ensure_running()?;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })?;
    let ready_events = cp.audit().since(mark)?;
    let at_ready = [
        usage(operator.process().pid(), ticks)?,
        usage(apiserver, ticks)?,
        usage(etcd, ticks)?,
    ];
    eprintln!(
        "all Ready after {:.1} s; waiting for the operator to go quiet",
        ready_after.as_secs_f64()
    );
    wait_operator_quiet(&cp, Duration::from_secs(15), Duration::from_secs(600))?;
    let settled_events = cp.audit().since(mark)?;
    let settled = [
        usage(operator.process().pid(), ticks)?,
        usage(apiserver, ticks)?,
        usage(etcd, ticks)?,
    ];

    // Phase 2: no-op resync by a restarted operator.
    let resync_mark = cp.audit().mark()?;
    let old_operator_cpu = settled[0].cpu_seconds;
    let old_operator_peak = settled[0].peak_rss_mib;
    operator.process().terminate(Duration::from_secs(30))?;
    let resync_started = Instant::now();
    let resync_operator = runtime.block_on(async {
        let admin = cp.admin_client().await?;
        let replacement = cp
            .start_operator(&OperatorOptions::new("envtest-scale-resync"))
            .await?;
        replacement
            .wait_leading(&admin, Duration::from_secs(120))
            .await?;
        anyhow::Ok(replacement)
    })?;
    let resync_base = usage(apiserver, ticks)?;
    let resync_etcd_base = usage(etcd, ticks)?;
    let deadline = Instant::now() + args.timeout;
    loop {
        resync_operator.process().ensure_running()?;
        let done = reconciles_total(resync_operator.admin_addr()).unwrap_or(0.0);
        if done >= args.tenants as f64 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the restarted operator reconciled only {done} Tenants"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let resync_time = resync_started.elapsed();
    wait_operator_quiet(&cp, Duration::from_secs(15), Duration::from_secs(600))?;
    let resync_events = cp.audit().since(resync_mark)?;
    let resync_usage = [
        usage(resync_operator.process().pid(), ticks)?,
        usage(apiserver, ticks)?,
        usage(etcd, ticks)?,
    ];

    let operator_of = |events: &[AuditEvent]| -> Vec<AuditEvent> {
        events
            .iter()
            .filter(|e| e.username() == OPERATOR_USER)
            .cloned()
            .collect()
    };
    let until_ready = operator_of(&ready_events);
    let until_settled = operator_of(&settled_events);
    let resync = operator_of(&resync_events);

    println!(
        "## envtest-scale: {} Tenants, {} kwok nodes",
        args.tenants, args.nodes
    );
    println!(
        "\nall {} Tenants Ready {:.1} s after the first create; no-op resync of all by a \
         restarted operator in {:.1} s (from its start to {} reconciles)",
        args.tenants,
        ready_after.as_secs_f64(),
        resync_time.as_secs_f64(),
        args.tenants
    );
    print_requests(
        "Operator requests until all Ready",
        &refs(&until_ready),
        args.tenants,
    );
    print_requests(
        "Operator requests until quiet after all Ready (status updates as Deployments become Available included)",
        &refs(&until_settled),
        args.tenants,
    );
    print_requests(
        "No-op resync (restarted operator)",
        &refs(&resync),
        args.tenants,
    );
    println!("\n### Resources\n");
    println!("| process | phase | CPU s | peak RSS MiB | RSS MiB at end |\n|---|---|---|---|---|");
    let names = ["operator", "kube-apiserver", "etcd"];
    for (i, name) in names.iter().enumerate() {
        println!(
            "| {name} | create until all Ready | {:.1} | {:.0} | {:.0} |",
            at_ready[i].cpu_seconds - base[i].cpu_seconds,
            at_ready[i].peak_rss_mib,
            at_ready[i].rss_mib
        );
        println!(
            "| {name} | ... until quiet | {:.1} | {:.0} | {:.0} |",
            settled[i].cpu_seconds - base[i].cpu_seconds,
            settled[i].peak_rss_mib,
            settled[i].rss_mib
        );
    }
    println!(
        "| operator (restarted) | no-op resync | {:.1} | {:.0} | {:.0} |",
        resync_usage[0].cpu_seconds, resync_usage[0].peak_rss_mib, resync_usage[0].rss_mib
    );
    println!(
        "| kube-apiserver | no-op resync | {:.1} | {:.0} | {:.0} |",
        resync_usage[1].cpu_seconds - resync_base.cpu_seconds,
        resync_usage[1].peak_rss_mib,
        resync_usage[1].rss_mib
    );
    println!(
        "| etcd | no-op resync | {:.1} | {:.0} | {:.0} |",
        resync_usage[2].cpu_seconds - resync_etcd_base.cpu_seconds,
        resync_usage[2].peak_rss_mib,
        resync_usage[2].rss_mib
    );
    eprintln!(
        "(first operator: {old_operator_cpu:.1} s CPU, peak {old_operator_peak:.0} MiB; total run {:.0} s)",
        started.elapsed().as_secs_f64()
    );

    let resync_writes: Vec<String> = resync
        .iter()
        .filter(|e| e.is_write() && !is_lease(e))
        .map(AuditEvent::summary)
        .collect();
    ensure!(
        resync_writes.is_empty(),
        "the no-op resync wrote {} times, e.g. {:?}",
        resync_writes.len(),
        resync_writes.iter().take(10).collect::<Vec<_>>()
    );
    println!("\nno-op resync writes (Lease excluded): 0");
    Ok(())
}

fn refs(events: &[AuditEvent]) -> Vec<&AuditEvent> {
    events.iter().collect()
}
