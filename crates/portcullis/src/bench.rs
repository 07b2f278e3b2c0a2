//! `portcullis bench`: the gateway's overhead, measured against the same upstream called
//! directly, in one run on one machine.
//!
//! It starts four real processes of this binary — the echo upstream (`echo-upstream`, a
//! stateless Streamable HTTP MCP server), a bare pass-through proxy (`pass-through`: the
//! gateway's HTTP server and upstream client with nothing in between, the floor any proxy on
//! this stack pays), the gateway (`serve`, SQLite store, API key authentication, grant
//! authorization and durable audit on) with its default settings, and the same gateway tuned
//! for latency on a small host (one worker thread, busy polling; see [`crate::busy_poll`]) —
//! then drives `tools/call` over real MCP sessions, one
//! keep-alive connection per worker, at concurrency 1 and 32. Every load targets loopback, is
//! bounded in time and stops by itself.

use crate::crypto::new_id;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One measured run.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub label: String,
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub seconds: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    /// CPU time per successful call over the measured window, in microseconds, of the load
    /// generator (this process), the upstream and the proxy under test (`None` when calling
    /// the upstream directly); `None` where `/proc` cannot tell.
    pub cpu_us: [Option<f64>; 3],
    /// How many calls took how long: counts per latency band (see [`band`]).
    pub bands: Vec<u64>,
}

impl Measurement {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Settings of a benchmark run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub duration: Duration,
    pub warmup: Duration,
    pub concurrency: Vec<usize>,
}

struct Process {
    child: Child,
    url: String,
}

impl Process {
    fn counted(&self) -> Counted {
        self.child.id().map_or(Counted::Nothing, Counted::Child)
    }
}

/// A process whose CPU time a measurement counts.
#[derive(Debug, Clone, Copy)]
enum Counted {
    /// This one: the load generator.
    ThisProcess,
    Child(u32),
    Nothing,
}

/// CPU time the process has used so far (all its threads, living and ended), in clock ticks
/// of 10 ms (Linux's fixed `USER_HZ`); `None` off Linux or once it is gone.
fn cpu_ticks(process: Counted) -> Option<u64> {
    let path = match process {
        Counted::ThisProcess => "/proc/self/stat".to_owned(),
        Counted::Child(pid) => format!("/proc/{pid}/stat"),
        Counted::Nothing => return None,
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command (which may hold spaces) start with the state, field 3; user and
    // system time are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Start this binary with `args` and wait for its `listening on http://…` line.
async fn start(args: &[&str]) -> anyhow::Result<Process> {
    start_with_env(args, &[]).await
}

async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Process> {
    let executable = std::env::current_exe().context("cannot find the portcullis executable")?;
    let mut child = Command::new(executable)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a child process")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("the child did not start within 60 s")??
        .context("the child exited before listening")?;
    let url = line.strip_prefix("listening on ").context("unexpected first line")?.to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Process { child, url })
}

/// Latency bands of the drawn distribution: quarter octaves from [`FIRST_BAND_US`] (everything
/// faster is in the first band) to 32 ms (everything slower is in the last).
const BANDS: usize = 44;
const FIRST_BAND_US: f64 = 16.0;
/// Bands per octave, and bands between two labels of the drawing's axis.
const BANDS_PER_OCTAVE: f64 = 4.0;
const BANDS_PER_LABEL: usize = 8;

/// The band of a latency given in nanoseconds.
fn band(nanos: u64) -> usize {
    let micros = nanos as f64 / 1000.0;
    if micros < FIRST_BAND_US {
        return 0;
    }
    (((micros / FIRST_BAND_US).log2() * BANDS_PER_OCTAVE) as usize).min(BANDS - 1)
}

/// The lower edge of a band, as the axis labels it (`64µs`, `1ms`).
fn band_label(band: usize) -> String {
    let micros = FIRST_BAND_US * (band as f64 / BANDS_PER_OCTAVE).exp2();
    if micros < 1000.0 { format!("{micros:.0}µs") } else { format!("{:.0}ms", micros / 1000.0) }
}

/// Draw how the latencies of `runs` (one concurrency level) spread, one row per run on a shared
/// logarithmic axis: a column per band, taller for a larger share of that run's calls (any call
/// at all shows, so tails are visible). Only the bands some run used are drawn.
fn draw_distribution(runs: &[Measurement]) -> Vec<String> {
    const LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let used = |band: &usize| runs.iter().any(|run| run.bands.get(*band).is_some_and(|count| *count > 0));
    let (Some(first), Some(last)) = ((0..BANDS).find(used), (0..BANDS).rev().find(used)) else {
        return Vec::new();
    };
    let first = first - first % BANDS_PER_LABEL;
    let last = (last | (BANDS_PER_LABEL - 1)).min(BANDS - 1);
    let share = |run: &Measurement, band: usize| {
        let total: u64 = run.bands.iter().sum();
        run.bands.get(band).map_or(0.0, |count| *count as f64 / total.max(1) as f64)
    };
    let highest = runs.iter().flat_map(|run| (first..=last).map(|band| share(run, band))).fold(0.0, f64::max);
    let mut axis = format!("{:<9}", "");
    for band in (first..=last).step_by(BANDS_PER_LABEL) {
        axis.push_str(&format!("{:<width$}", band_label(band), width = BANDS_PER_LABEL));
    }
    let mut lines = vec![axis.trim_end().to_owned()];
    for run in runs {
        let mut row = format!("{:<9}", run.label);
        for band in first..=last {
            let part = share(run, band);
            let level = if part > 0.0 { ((part / highest * 8.0).ceil() as usize).clamp(1, 8) } else { 0 };
            row.push(LEVELS[level]);
        }
        lines.push(row.trim_end().to_owned());
    }
    lines
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index] as f64 / 1000.0
}

/// A worker's connection: one HTTP/1.1 keep-alive connection and, through the gateway, one
/// MCP session.
struct Worker {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
}

impl Worker {
    async fn new(url: &str, key: Option<&str>) -> anyhow::Result<Worker> {
        let client = reqwest::Client::builder().pool_max_idle_per_host(1).tcp_nodelay(true).build()?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("content-type", "application/json".parse()?);
        headers.insert("accept", "application/json, text/event-stream".parse()?);
        if let Some(key) = key {
            headers.insert("authorization", format!("Bearer {key}").parse()?);
        }
        let mut worker = Worker { client, url: url.to_owned(), headers };
        let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "portcullis-bench", "version": "1"}}});
        let response =
            worker.client.post(&worker.url).headers(worker.headers.clone()).body(initialize.to_string()).send().await?;
        if !response.status().is_success() {
            bail!("initialize at {url} answered HTTP {}", response.status());
        }
        if let Some(session) = response.headers().get("mcp-session-id").cloned() {
            worker.headers.insert("mcp-session-id", session);
            worker.headers.insert("mcp-protocol-version", "2025-06-18".parse()?);
        }
        let _ = response.bytes().await?;
        Ok(worker)
    }

    async fn call(&self, id: u64) -> bool {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hello"}}}}}}"#
        );
        let Ok(response) = self.client.post(&self.url).headers(self.headers.clone()).body(body).send().await else {
            return false;
        };
        let ok = response.status().is_success();
        match response.bytes().await {
            Ok(bytes) => ok && serde_json::from_slice::<Value>(&bytes).is_ok_and(|value| value.get("result").is_some()),
            Err(_) => false,
        }
    }
}

async fn measure(
    label: &str,
    url: &str,
    key: Option<&str>,
    concurrency: usize,
    settings: &Settings,
    // The load generator, the upstream and the proxy under test.
    counted: [Counted; 3],
) -> anyhow::Result<Measurement> {
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        workers.push(Worker::new(url, key).await?);
    }
    let warmup_until = Instant::now() + settings.warmup;
    let measure_until = warmup_until + settings.duration;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|worker| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(100_000);
                let mut errors = 0usize;
                let mut id = 1u64;
                loop {
                    let started = Instant::now();
                    if started >= measure_until {
                        break;
                    }
                    let ok = worker.call(id).await;
                    id += 1;
                    if started >= warmup_until {
                        if ok {
                            latencies.push(started.elapsed().as_nanos() as u64);
                        } else {
                            errors += 1;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    tokio::time::sleep_until(warmup_until.into()).await;
    let cpu_before = counted.map(cpu_ticks);
    tokio::time::sleep_until(measure_until.into()).await;
    let cpu_after = counted.map(cpu_ticks);
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, worker_errors) = task.await?;
        all.extend(latencies);
        errors += worker_errors;
    }
    all.sort_unstable();
    let mut bands = vec![0; BANDS];
    for latency in &all {
        bands[band(*latency)] += 1;
    }
    let calls = all.len().max(1) as f64;
    let cpu_us = std::array::from_fn(|index| match (cpu_before[index], cpu_after[index]) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before) as f64 * 10_000.0 / calls),
        _ => None,
    });
    Ok(Measurement {
        label: label.to_owned(),
        concurrency,
        requests: all.len(),
        errors,
        seconds: settings.duration.as_secs_f64(),
        p50_us: percentile(&all, 0.50),
        p90_us: percentile(&all, 0.90),
        p99_us: percentile(&all, 0.99),
        cpu_us,
        bands,
    })
}

/// Run the whole benchmark and print the table.
pub async fn run(settings: Settings) -> anyhow::Result<Vec<Measurement>> {
    let directory = std::env::temp_dir().join(format!("portcullis-bench-{}", new_id()));
    std::fs::create_dir_all(&directory)?;
    let result = run_in(&directory, &settings).await;
    let _ = std::fs::remove_dir_all(&directory);
    result
}

async fn run_in(directory: &std::path::Path, settings: &Settings) -> anyhow::Result<Vec<Measurement>> {
    eprintln!("starting the echo upstream and the gateways (SQLite stores in {})", directory.display());
    let upstream = start(&["echo-upstream", "--listen", "127.0.0.1:0"]).await?;
    let (data, key) = prepare_gateway(&directory.join("data"), &upstream.url).await?;
    let gateway = start(&["serve", "--listen", "127.0.0.1:0", "--data-dir", &data]).await?;
    eprintln!("(the gateway runs with its default settings; PORTCULLIS_* variables of this shell apply to it)");
    // The same gateway tuned for latency on a small host: one worker thread (no hand-offs
    // between threads) that polls its sockets for a millisecond after each request.
    let (tuned_data, tuned_key) = prepare_gateway(&directory.join("tuned"), &upstream.url).await?;
    let tuned = start_with_env(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", &tuned_data],
        &[(TUNED[0].0, TUNED[0].1), (TUNED[1].0, TUNED[1].1)],
    )
    .await?;
    let proxy = start(&["pass-through", "--listen", "127.0.0.1:0", "--upstream", &upstream.url]).await?;

    let mut results = Vec::new();
    for &concurrency in &settings.concurrency {
        eprintln!("concurrency {concurrency}: direct …");
        let counted = |target: &Process| [Counted::ThisProcess, upstream.counted(), target.counted()];
        let direct = [Counted::ThisProcess, upstream.counted(), Counted::Nothing];
        results.push(measure("direct", &upstream.url, None, concurrency, settings, direct).await?);
        eprintln!("concurrency {concurrency}: through a bare pass-through proxy …");
        results.push(measure("proxy", &proxy.url, None, concurrency, settings, counted(&proxy)).await?);
        eprintln!("concurrency {concurrency}: through the gateway …");
        let gateway_url = format!("{}/mcp/echo", gateway.url);
        results.push(measure("gateway", &gateway_url, Some(&key), concurrency, settings, counted(&gateway)).await?);
        eprintln!("concurrency {concurrency}: through the tuned gateway …");
        let tuned_url = format!("{}/mcp/echo", tuned.url);
        results.push(measure("tuned", &tuned_url, Some(&tuned_key), concurrency, settings, counted(&tuned)).await?);
    }
    print_table(&results);
    drop(tuned);
    drop(gateway);
    drop(proxy);
    drop(upstream);
    Ok(results)
}

/// The settings of the tuned gateway.
const TUNED: [(&str, &str); 2] = [("PORTCULLIS_WORKER_THREADS", "1"), ("PORTCULLIS_BUSY_POLL_US", "1000")];

/// A gateway store in `data_dir` with the echo server at `upstream`, a user granted it and
/// an API key for them; the data directory and the key.
async fn prepare_gateway(data_dir: &std::path::Path, upstream: &str) -> anyhow::Result<(String, String)> {
    let data = data_dir.display().to_string();
    std::fs::create_dir_all(data_dir)?;
    let config_path: PathBuf = data_dir.join("bench.toml");
    std::fs::write(
        &config_path,
        format!(
            "[[servers]]\nname = \"echo\"\ntransport = \"streamable-http\"\nurl = \"{upstream}\"\n\
             [[users]]\nemail = \"bench@example.com\"\n[[grants]]\nserver = \"echo\"\nusers = [\"bench@example.com\"]\n"
        ),
    )?;
    let config = crate::config::load(None, [("data_dir", data.clone())].into_iter().collect())?;
    let keys = config.secret_key()?.derive();
    let store = crate::store::Store::open(&config.store).await?;
    crate::apply::apply_file(&store, &keys, &config_path, Default::default()).await?;
    let key = crate::cli::create_api_key(&store, "bench@example.com", "bench").await?;
    store.close().await;
    Ok((data, key))
}

/// Headers a pass-through forwards, both ways.
const PASSED_HEADERS: [&str; 4] = ["content-type", "accept", "mcp-session-id", "mcp-protocol-version"];

/// Bind the bare pass-through proxy: every POST to `/mcp` goes to `upstream` with the same
/// pooled client and server settings as the gateway, and nothing else happens.
pub async fn bind_pass_through(
    listen: SocketAddr,
    upstream: String,
) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use http_body_util::BodyExt;
    let client = crate::upstream::http::HttpUpstream::new(&[], false);
    let upstream = reqwest::Url::parse(&upstream)?;
    let forward = move |headers: HeaderMap, body: bytes::Bytes| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let mut passed = HeaderMap::new();
            for name in PASSED_HEADERS {
                if let Some(value) = headers.get(name) {
                    passed.insert(name, value.clone());
                }
            }
            let Ok(answer) = client.send_request(reqwest::Method::POST, upstream, passed, body).await else {
                return StatusCode::BAD_GATEWAY.into_response();
            };
            let mut response = Response::builder().status(answer.status().as_u16());
            for name in PASSED_HEADERS {
                if let Some(value) = answer.headers().get(name) {
                    response = response.header(name, value.as_bytes());
                }
            }
            match answer.into_body().collect().await {
                Ok(collected) => response.body(axum::body::Body::from(collected.to_bytes())).unwrap_or_default(),
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let router = axum::Router::new().route("/mcp", axum::routing::post(forward));
    let serve = async move {
        let _ = axum::serve(crate::app::no_delay(listener), router).await;
    };
    Ok((address, serve))
}

fn print_table(results: &[Measurement]) {
    println!();
    println!(
        "tools/call echo, {} s per run after warm-up; latency in microseconds",
        results.first().map_or(0.0, |m| m.seconds)
    );
    println!(
        "{:<8} {:>4} {:>9} {:>9} {:>9} {:>11} {:>7}   {:>9} {:>9} {:>9}",
        "target", "conc", "p50", "p90", "p99", "req/s", "errors", "cpu:load", "upstream", "proxy"
    );
    for measurement in results {
        let [generator, upstream, target] =
            measurement.cpu_us.map(|cpu| cpu.map_or("-".to_owned(), |us| format!("{us:.1}")));
        println!(
            "{:<8} {:>4} {:>9.0} {:>9.0} {:>9.0} {:>11.0} {:>7}   {generator:>9} {upstream:>9} {target:>9}",
            measurement.label,
            measurement.concurrency,
            measurement.p50_us,
            measurement.p90_us,
            measurement.p99_us,
            measurement.throughput(),
            measurement.errors
        );
    }
    println!(
        "(cpu: microseconds of CPU time per call, over the measured seconds, of the load generator, \
         the upstream and the proxy or gateway measured)"
    );
    for run in results.chunk_by(|one, other| one.concurrency == other.concurrency) {
        println!();
        println!(
            "how the latencies spread at concurrency {} (a column per quarter octave; taller: a larger share of the calls)",
            run[0].concurrency
        );
        for line in draw_distribution(run) {
            println!("{line}");
        }
    }
    println!();
    for run in results.chunks(4) {
        if let [direct, proxy, gateway, tuned] = run {
            println!(
                "concurrency {:>2}: gateway adds {:.0} µs at p50 and {:.0} µs at p99; throughput {:.0}% of direct",
                direct.concurrency,
                gateway.p50_us - direct.p50_us,
                gateway.p99_us - direct.p99_us,
                100.0 * gateway.throughput() / direct.throughput()
            );
            println!(
                "                (a bare pass-through proxy adds {:.0} µs at p50 and {:.0} µs at p99, {:.0}% of direct; \
                 authentication, policy and the audit commit add {:.0} µs at p50 on top)",
                proxy.p50_us - direct.p50_us,
                proxy.p99_us - direct.p99_us,
                100.0 * proxy.throughput() / direct.throughput(),
                gateway.p50_us - proxy.p50_us
            );
            println!(
                "                (tuned for latency — {}={}, {}={} — it adds {:.0} µs at p50 and {:.0} µs at p99, {:.0}% of direct)",
                TUNED[0].0,
                TUNED[0].1,
                TUNED[1].0,
                TUNED[1].1,
                tuned.p50_us - direct.p50_us,
                tuned.p99_us - direct.p99_us,
                100.0 * tuned.throughput() / direct.throughput()
            );
        }
    }
}

/// How long a suspension made through one replica takes to refuse the user on another: two
/// `serve` processes on a fresh database of the PostgreSQL server at `server_url` (dropped
/// afterwards); each round suspends through the first replica's API and polls the second with
/// the user's key until it is refused, then reactivates.
pub async fn revocation(server_url: &str, rounds: usize) -> anyhow::Result<()> {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(server_url)
        .await
        .with_context(|| format!("cannot connect to {}", crate::store::redact_url(server_url)))?;
    let name = format!("portcullis_bench_{}", &new_id()[..12]);
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await?;
    let base = server_url.rsplit_once('/').map_or(server_url, |(base, _)| base);
    let database = format!("{base}/{name}");
    let result = revocation_in(&database, rounds).await;
    admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await?;
    result
}

async fn revocation_in(database: &str, rounds: usize) -> anyhow::Result<()> {
    let key = crate::crypto::SecretKey::generate();
    let store = crate::store::Store::open(&crate::config::StoreLocation::Postgres(database.to_owned())).await?;
    let directory = std::env::temp_dir().join(format!("portcullis-bench-{}", new_id()));
    std::fs::create_dir_all(&directory)?;
    let file = directory.join("people.toml");
    std::fs::write(
        &file,
        "[[users]]\nemail = \"bench@example.com\"\n[[users]]\nemail = \"root@example.com\"\nadmin = true\n",
    )?;
    crate::apply::apply_file(&store, &key.derive(), &file, Default::default()).await?;
    let _ = std::fs::remove_dir_all(&directory);
    let user_key = crate::cli::create_api_key(&store, "bench@example.com", "bench").await?;
    let admin_key = crate::cli::create_api_key(&store, "root@example.com", "bench").await?;
    store.close().await;
    let encoded = key.encode();
    let env = [("PORTCULLIS_SECRET_KEY", encoded.as_str())];
    let args = ["serve", "--listen", "127.0.0.1:0", "--database-url", database];
    let first = start_with_env(&args, &env).await?;
    let second = start_with_env(&args, &env).await?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let probe = format!("{}/api/v1/servers", second.url);
    let status_on_second =
        || async { http.get(&probe).bearer_auth(&user_key).send().await.map(|r| r.status().as_u16()) };
    let mut delays = Vec::with_capacity(rounds);
    let mut totals = Vec::with_capacity(rounds);
    for round in 0..rounds {
        for (action, wanted) in [("suspend", 401), ("activate", 200)] {
            let url = format!("{}/api/v1/users/bench@example.com/{action}", first.url);
            let sent = Instant::now();
            let answered = http.post(&url).bearer_auth(&admin_key).send().await?;
            if !answered.status().is_success() {
                bail!("{action} answered HTTP {}", answered.status());
            }
            let committed = Instant::now();
            let deadline = committed + Duration::from_secs(10);
            while status_on_second().await? != wanted {
                if Instant::now() > deadline {
                    bail!("round {round}: the {action} did not reach the second replica within 10 s");
                }
            }
            if action == "suspend" {
                delays.push(committed.elapsed().as_nanos() as u64);
                totals.push(sent.elapsed().as_nanos() as u64);
            }
        }
    }
    delays.sort_unstable();
    totals.sort_unstable();
    println!();
    println!("revocation: suspend through one replica, refused by the other (PostgreSQL, {rounds} rounds)");
    for (label, values) in [("from the suspend request", &totals), ("after its answer", &delays)] {
        println!(
            "  {label:<25} p50 {:>6.1} ms   p90 {:>6.1} ms   max {:>6.1} ms",
            percentile(values, 0.5) / 1000.0,
            percentile(values, 0.9) / 1000.0,
            percentile(values, 1.0) / 1000.0
        );
    }
    drop(first);
    drop(second);
    Ok(())
}

/// `portcullis bench --policy`: decision latency of the fast evaluator and of Cedar's own
/// authorizer side by side, on the same rules and questions, with 10, 1,000 and 10,000 rules
/// spread over 100 servers; and filtering a `tools/list` of 500 tools.
pub fn policy(seconds_per_case: f64) -> anyhow::Result<()> {
    use policy::cedar::Oracle;
    use policy::{Condition, Context, Effect, Principals, Rule, RuleSet, Subject, Target};
    use serde_json::json;

    // A deterministic generator, so runs compare.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let tables = json!(["orders", "invoices", "customers"]);
    let make_rules = |count: usize, next: &mut dyn FnMut(u64) -> u64| -> Vec<Rule> {
        (0..count)
            .map(|index| {
                let deny = next(5) == 0;
                let global = deny && next(100) == 0;
                let principals = match next(4) {
                    0 => Principals { users: vec![format!("user{}@example.com", next(200))], ..Principals::default() },
                    1 | 2 => Principals { groups: vec![format!("group{}", next(50))], ..Principals::default() },
                    _ => Principals { roles: vec![format!("role{}", next(20))], ..Principals::default() },
                };
                let tools = match next(3) {
                    0 => Vec::new(),
                    1 => vec![format!("tool{}", next(500))],
                    _ => vec![format!("tool{}*", next(50))],
                };
                let conditions = match next(4) {
                    0 => vec![Condition::compile("payload.table", "in", tables.clone()).expect("valid")],
                    1 => vec![Condition::compile("meta.request.ip", "in_cidr", json!("10.0.0.0/8")).expect("valid")],
                    _ => Vec::new(),
                };
                Rule {
                    name: format!("rule {index}"),
                    effect: if deny { Effect::Deny } else { Effect::Allow },
                    global,
                    servers: if global { Vec::new() } else { vec![format!("server{}", next(100))] },
                    principals,
                    tools,
                    resources: Vec::new(),
                    prompts: Vec::new(),
                    conditions,
                    expires_at: None,
                    enabled: true,
                }
            })
            .collect()
    };
    let subjects: Vec<Subject> = (0..50)
        .map(|index| Subject {
            email: format!("user{index}@example.com"),
            groups: (0..3).map(|group| format!("group{}", (index * 3 + group) % 50)).collect(),
            roles: vec![format!("role{}", index % 20)],
            ..Subject::default()
        })
        .collect();
    let context =
        json!({"payload": {"table": "orders"}, "meta": {"request": {"ip": "10.1.2.3"}, "client": {"name": "cursor"}}});
    let fixed = Context::of(context.clone());

    let summary = |label: &str, count: usize, samples: &mut Vec<u64>, allowed: usize| {
        samples.sort_unstable();
        println!(
            "{count:>7}  {label:<9} {:>10.2} {:>10.2} {:>10}  {:>5.1} %",
            percentile(samples, 0.50),
            percentile(samples, 0.99),
            samples.len(),
            100.0 * allowed as f64 / samples.len().max(1) as f64
        );
    };
    println!("decision latency (µs), one decision at a time, same rules and questions for both");
    println!("(Cedar answers fewer questions in the same time, so its share allowed is over a shorter sample)");
    println!("{:>7}  {:<9} {:>10} {:>10} {:>10}  {:>7}", "rules", "evaluator", "p50", "p99", "decisions", "allowed");
    for count in [10, 1_000, 10_000] {
        let rules = make_rules(count, &mut next);
        let fast = RuleSet::compile(rules.clone()).map_err(|error| anyhow::anyhow!("{error}"))?;
        let oracle = Oracle::new(&rules).map_err(|error| anyhow::anyhow!(error))?;
        let questions: Vec<(usize, String, String)> = (0..1_000)
            .map(|_| (next(50) as usize, format!("server{}", next(100)), format!("tool{}", next(500))))
            .collect();
        for evaluator in ["fast", "cedar"] {
            let mut samples = Vec::new();
            let mut allowed = 0;
            let started = std::time::Instant::now();
            let mut round = 0;
            while started.elapsed().as_secs_f64() < seconds_per_case && samples.len() < 200_000 {
                let (subject, server, tool) = &questions[round % questions.len()];
                round += 1;
                let subject = &subjects[*subject];
                let target = Target::Tool(tool);
                let (took, allow) = if evaluator == "fast" {
                    let at = std::time::Instant::now();
                    let allow = fast.decide(subject, server, target, &fixed, 0).allowed;
                    (at.elapsed(), allow)
                } else {
                    let question =
                        oracle.prepare(subject, server, target, &context, 0).map_err(|error| anyhow::anyhow!(error))?;
                    let at = std::time::Instant::now();
                    let allow = oracle.authorize(&question).map_err(|error| anyhow::anyhow!(error))?;
                    (at.elapsed(), allow)
                };
                samples.push(took.as_nanos() as u64);
                allowed += usize::from(allow);
            }
            summary(evaluator, count, &mut samples, allowed);
        }
    }

    println!();
    println!("tools/list of 500 tools filtered for one caller (µs per list), fast evaluator");
    println!("{:>7}  {:>10} {:>10} {:>10}  {:>12}", "rules", "p50", "p99", "lists", "shown (mean)");
    let tools: Vec<String> = (0..500).map(|index| format!("tool{index}")).collect();
    for count in [10, 1_000, 10_000] {
        let rules = make_rules(count, &mut next);
        let fast = RuleSet::compile(rules).map_err(|error| anyhow::anyhow!("{error}"))?;
        let listing = || context.clone();
        let mut samples = Vec::new();
        let mut shown = 0;
        let started = std::time::Instant::now();
        let mut round = 0;
        while started.elapsed().as_secs_f64() < seconds_per_case && samples.len() < 20_000 {
            let subject = &subjects[round % subjects.len()];
            let server = format!("server{}", round % 100);
            round += 1;
            let at = std::time::Instant::now();
            let context = Context::listing(&listing);
            shown += tools.iter().filter(|tool| fast.allows(subject, &server, Target::Tool(tool), &context, 0)).count();
            samples.push(at.elapsed().as_nanos() as u64);
        }
        samples.sort_unstable();
        println!(
            "{count:>7}  {:>10.1} {:>10.1} {:>10}  {:>12.1}",
            percentile(&samples, 0.50),
            percentile(&samples, 0.99),
            samples.len(),
            shown as f64 / samples.len().max(1) as f64
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(label: &str, latencies_us: &[u64]) -> Measurement {
        let mut bands = vec![0; BANDS];
        for latency in latencies_us {
            bands[band(latency * 1000)] += 1;
        }
        Measurement {
            label: label.into(),
            concurrency: 1,
            requests: latencies_us.len(),
            errors: 0,
            seconds: 1.0,
            p50_us: 0.0,
            p90_us: 0.0,
            p99_us: 0.0,
            cpu_us: [None; 3],
            bands,
        }
    }

    #[test]
    fn latencies_fall_in_quarter_octave_bands() {
        assert_eq!(band(0), 0);
        assert_eq!(band(15_999), 0);
        assert_eq!(band(16_000), 0);
        assert_eq!(band(19_100), 1, "16 µs times 2^(1/4) is 19.03 µs");
        assert_eq!(band(32_000), 4);
        assert_eq!(band(64_000), 8);
        assert_eq!(band(1_024_000), 24);
        assert_eq!(band(10_000_000_000), BANDS - 1, "ten seconds is in the last band");
        assert_eq!(band_label(0), "16µs");
        assert_eq!(band_label(8), "64µs");
        assert_eq!(band_label(24), "1ms");
        assert_eq!(band_label(40), "16ms");
    }

    #[test]
    fn distributions_are_drawn_on_one_axis() {
        // All of one run's calls at 50 µs; half of another's at 100 µs, a quarter at 1.1 ms and
        // one call in four hundred at 5 ms.
        let fast = measured("direct", &[50; 400]);
        let mut slow_latencies = vec![100; 200];
        slow_latencies.extend([1100; 199]);
        slow_latencies.push(5000);
        let slow = measured("gateway", &slow_latencies);
        let lines = draw_distribution(&[fast, slow]);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        // From the 16 µs label to the end of the 4 ms octave pair: 40 columns.
        assert_eq!(lines[0], format!("{:9}16µs    64µs    256µs   1ms     4ms", ""));
        let columns = |line: &str| line.chars().skip(9).collect::<Vec<char>>();
        let direct = columns(&lines[1]);
        assert_eq!(direct.len(), band(50_000) + 1, "{:?}", lines[1]);
        assert_eq!(direct[band(50_000)], '█');
        assert!(direct[..band(50_000)].iter().all(|column| *column == ' '));
        let gateway = columns(&lines[2]);
        assert_eq!(gateway[band(100_000)], '▄', "half the calls: half the height of the tallest");
        assert_eq!(gateway[band(1_100_000)], '▄');
        assert_eq!(gateway[band(5_000_000)], '▁', "a single slow call still shows");
        assert_eq!(gateway.iter().filter(|column| **column != ' ').count(), 3);
        assert!(draw_distribution(&[measured("none", &[])]).is_empty());
    }

    #[test]
    fn cpu_time_is_read_from_proc_and_grows_with_work() {
        let before = cpu_ticks(Counted::ThisProcess).expect("this process's CPU time from /proc");
        // Work until 200 ms of CPU time are counted (ticks are 10 ms); a count that never grows
        // fails after 20 s of wall time, however busy the host.
        let started = Instant::now();
        let mut spin = 0u64;
        let mut after = before;
        while after < before + 20 && started.elapsed() < Duration::from_secs(20) {
            for _ in 0..100_000 {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
            after = cpu_ticks(Counted::ThisProcess).expect("this process's CPU time from /proc");
        }
        assert!(after >= before + 20, "20 s of work counted {} ticks", after - before);
        let child = cpu_ticks(Counted::Child(std::process::id())).expect("a process by its id");
        assert!(child >= after);
        assert_eq!(cpu_ticks(Counted::Nothing), None);
        assert_eq!(cpu_ticks(Counted::Child(u32::MAX)), None, "no such process");
    }
}
