//! Load benchmark: the release `bulkhead-server` with authentication, audit
//! (to a file) and rate limits (high enough never to trigger) on, driven by
//! a closed-loop HTTP client calling `tools/call whoami` on loopback.
//!
//! Run: `cargo bench -p bulkhead-server --bench load`
//! (`BENCH_SECONDS` sets the duration of each run, default 10.)
//!
//! Prints throughput, p50 and p99 latency at 1 and 50 concurrent callers,
//! the CPU time the server and the load generator each spent per request
//! (they share the machine, so this says where the cores went), and the
//! server's resident memory (VmRSS) idle and under load.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_server::api_keys::{generate_api_key, hash_api_key};

const CALLERS: usize = 50;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used so far, from
/// `/proc/<pid>/stat`, in clock ticks of 10 ms (USER_HZ on Linux is 100).
fn cpu_ticks(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command name; utime and stime
            // are fields 14 and 15 of the whole line.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0)
}

const TICK_MICROS: f64 = 10_000.0;

struct Server {
    child: Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_server(keys: &[String]) -> Server {
    let dir = std::env::temp_dir().join(format!("bulkhead-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_lines: String = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("caller-{i}: {}\n", hash_api_key(k)))
        .collect();
    std::fs::write(dir.join("keys.yaml"), key_lines).unwrap();
    std::fs::write(dir.join("credentials.yaml"), "").unwrap();
    std::fs::write(
        dir.join("server.yaml"),
        "tenantId: bench\n\
         allowedHosts: [\"127.0.0.1\"]\n\
         apiKeys: {type: file, path: keys.yaml}\n\
         credentials: {type: file, path: credentials.yaml}\n\
         rateLimits:\n  perCaller: {requestsPerMinute: 100000000, burst: 1000000}\n  \
         perTool: [{tool: whoami, requestsPerMinute: 100000000, burst: 1000000}]\n",
    )
    .unwrap();
    let ready = dir.join("ready.json");
    let child = Command::new(env!("CARGO_BIN_EXE_bulkhead-server"))
        .arg("--config")
        .arg(dir.join("server.yaml"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--ready-file")
        .arg(&ready)
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(dir.join("audit.log")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut url = String::new();
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            url = format!("http://{}/mcp", v["mcp"].as_str().unwrap());
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(!url.is_empty(), "server did not start");
    Server { child, url, dir }
}

struct RunResult {
    requests: usize,
    errors: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    peak_rss_kib: u64,
}

async fn run(
    url: &str,
    keys: &[String],
    concurrency: usize,
    duration: Duration,
    pid: u32,
) -> RunResult {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let stop = stop.clone();
        let peak = peak.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let client = client.clone();
        let url = url.to_owned();
        let auth = format!("Bearer {}", keys[worker % keys.len()]);
        let stop = stop.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-protocol-version", "2025-06-18")
                    .header("authorization", &auth)
                    .body(body)
                    .send()
                    .await;
                let ok = match response {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                latencies.push(t.elapsed());
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let _ = sampler.await;
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    RunResult {
        requests: all.len(),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        peak_rss_kib: peak.load(Ordering::Relaxed),
    }
}

fn main() {
    bulkhead_server::connectors::upstream::install_crypto_provider();
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let keys: Vec<String> = (0..CALLERS)
        .map(|_| generate_api_key().expect("random source"))
        .collect();
    let server = start_server(&keys);
    let pid = server.child.id();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Wait until the keys are loaded (readiness of the MCP endpoint).
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        for _ in 0..200 {
            let r = client
                .post(&server.url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("authorization", format!("Bearer {}", keys[0]))
                .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
                .send()
                .await;
            if r.is_ok_and(|r| r.status() == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_kib(pid);
    println!(
        "bulkhead-server load benchmark: tools/call whoami, auth + audit + rate limits on, {seconds} s per run"
    );
    println!("idle RSS: {:.1} MiB", idle as f64 / 1024.0);
    for concurrency in [1, 50] {
        // Short warm-up so connection setup is not measured.
        runtime.block_on(run(
            &server.url,
            &keys,
            concurrency,
            Duration::from_millis(500),
            pid,
        ));
        let (server_before, client_before) = (cpu_ticks(&pid.to_string()), cpu_ticks("self"));
        let r = runtime.block_on(run(
            &server.url,
            &keys,
            concurrency,
            Duration::from_secs(seconds),
            pid,
        ));
        let per_request = |ticks: u64| ticks as f64 * TICK_MICROS / r.requests.max(1) as f64;
        let server_cpu = per_request(cpu_ticks(&pid.to_string()) - server_before);
        let client_cpu = per_request(cpu_ticks("self") - client_before);
        println!(
            "{concurrency:>3} callers: {:>8.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}  loaded RSS {:.1} MiB  \
             CPU per request: server {server_cpu:.0} us, load generator {client_cpu:.0} us",
            r.requests as f64 / r.elapsed.as_secs_f64(),
            r.p50.as_secs_f64() * 1000.0,
            r.p99.as_secs_f64() * 1000.0,
            r.errors,
            r.peak_rss_kib as f64 / 1024.0,
        );
    }
    let audit_lines = std::fs::read_to_string(server.dir.join("audit.log"))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    println!("audit lines written: {audit_lines}");
}
