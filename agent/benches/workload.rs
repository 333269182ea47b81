//! Workload API benchmark: `cargo bench -p sigil-agent --bench workload`.
//!
//! A real server runs in this process (sled in a temp dir, mTLS on loopback). Part 1 uses an
//! in-process agent (`sigil_agent::serve::start`); parts 2 and 3 spawn the real `sigil-agent`
//! binary, so its latency is not shared with the bench's clients and its CPU and memory can be
//! read from `/proc/<pid>`. Every workload is this process (same uid), attested through
//! `SO_PEERCRED` like any caller, and each workload uses its own Unix connection.
//!
//! 1. Propagation: from the admin `BatchCreateEntry` acknowledgement to the new SVID on an
//!    already-open `FetchX509SVID` stream, one entry at a time.
//! 2. Cached fetch: first message of `FetchX509SVID`, on an open connection and with a new
//!    Unix-socket connection per fetch, with 1, 4, 100 and 1000 workloads in flight; the agent's
//!    CPU time per fetch (sum of its threads' `schedstat`).
//! 3. Agent RSS with 10,000 held `FetchX509SVID` streams, one connection each, opened in bursts of
//!    64 (every workload reconnecting after an agent restart), read right after the last burst,
//!    once the agent is idle, and after holding them `BENCH_HOLD_SECS` (default 60); the same
//!    streams multiplexed on few connections; and with 10,000 cached SVIDs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sigil_proto::sigil::v1 as pb;
use sigil_proto::workload as wl;

const PROPAGATION_ENTRIES: usize = 200;
const HELD_STREAMS: usize = 10_000;
const CACHED_SVIDS: usize = 10_000;

fn main() {
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = hard.min(65_536);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    // Each side of the held streams (this process, the agent child) needs one fd per stream.
    let needed = (HELD_STREAMS + 1000) as u64;
    if want < needed {
        eprintln!("warning: fd limit {want} < {needed}; part 3 may fail");
    }
}

/// Latency samples.
struct Stats(Vec<Duration>);

impl Stats {
    fn pct(&mut self, p: usize) -> Duration {
        self.0.sort_unstable();
        let n = self.0.len();
        self.0[((n * p) / 100).min(n - 1)]
    }
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} us")
    }
}

struct Row {
    what: String,
    p50: String,
    p99: String,
    extra: String,
    target: &'static str,
}

async fn run() {
    let dir = tempfile::Builder::new()
        .prefix("sb")
        .tempdir_in("/tmp")
        .unwrap();
    let t_all = Instant::now();
    let server = TestServer::start(dir.path(), 0).await;
    let bundle_path = dir.path().join("bundle.pem");
    server.write_bundle_pem(&bundle_path).await;
    let mut rows = Vec::new();

    // BENCH_ONLY=fetch|prop|mem runs one part (for profiling).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let part = |p: &str| only.is_empty() || only == p;

    // 2. Cached fetch (1 SVID per response), against the real agent binary.
    let mut sizes = String::new();
    if part("fetch") {
        let alias = format!("spiffe://{TD}/node/bench-f");
        let token = server.join_token(&alias).await;
        server
            .create_entry(entry("bench/fetch", &alias, uid()))
            .await;
        let toml = agent_toml(dir.path(), "f", server.addr, &bundle_path, &token);
        let f = ChildAgent::spawn(dir.path(), "f", &toml);
        wait_socket(&f.sock).await;
        wait_fetch(&f.sock, 1).await;
        // A binary changed in the last 2 s is hashed on every call (the digest cache's racy
        // window); right after `cargo bench` built this one, let that pass.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        sizes = wire_sizes(&f.sock).await;
        for conc in [1usize, 4, 100, 1000] {
            for new_conn in [false, true] {
                let fetches_per_task = match conc {
                    1 => 10_000,
                    4 => 2_500,
                    100 => 40,
                    _ => 6,
                };
                let (mut s, rate, cpu) =
                    cached_fetch(&f.sock, f.pid(), conc, fetches_per_task, new_conn).await;
                rows.push(Row {
                    what: format!(
                        "cached FetchX509SVID, {conc:>4} in flight, {}",
                        if new_conn {
                            "new conn per fetch"
                        } else {
                            "open connection   "
                        }
                    ),
                    p50: us(s.pct(50)),
                    p99: us(s.pct(99)),
                    extra: format!("{rate:.0} fetch/s, agent CPU {cpu:.0} us/fetch"),
                    target: match (conc, new_conn) {
                        (1, true) => "p50 <= 150 us, p99 <= 500 us",
                        (1, false) => "agent CPU <= 60 us/fetch",
                        _ => "",
                    },
                });
            }
        }
        let _ = f.stop().await;
    }

    // 1. Propagation, on an in-process agent.
    if part("prop") {
        let alias_a = format!("spiffe://{TD}/node/bench-a");
        let token = server.join_token(&alias_a).await;
        let cfg = agent_toml(dir.path(), "a", server.addr, &bundle_path, &token);
        let agent = sigil_agent::serve::start(
            sigil_agent::config::Config::from_toml(&cfg, Default::default()).unwrap(),
        )
        .await
        .unwrap();
        let sock = agent.socket_path.clone();
        server
            .create_entry(entry("bench/prop", &alias_a, uid()))
            .await;
        wait_fetch(&sock, 1).await;
        let mut s = propagation(&server, &alias_a, &sock).await;
        rows.insert(
            0,
            Row {
                what: format!("propagation create -> open stream ({PROPAGATION_ENTRIES} entries)"),
                p50: us(s.pct(50)),
                p99: us(s.pct(99)),
                extra: format!("max {}", us(s.pct(100))),
                target: "p99 <= 5 ms",
            },
        );
        agent.shutdown().await;
    }

    // 3. Memory of the real agent binary.
    let mem = if part("mem") {
        memory(&server, dir.path(), &bundle_path).await
    } else {
        Vec::new()
    };

    println!();
    println!("sigil-agent Workload API benchmark (2 cores, release, in-process server)");
    println!(
        "{:<62} {:>9} {:>9}  {:<40} target",
        "measurement", "p50", "p99", ""
    );
    for r in &rows {
        println!(
            "{:<62} {:>9} {:>9}  {:<40} {}",
            r.what, r.p50, r.p99, r.extra, r.target
        );
    }
    for line in mem {
        println!("{line}");
    }
    if !sizes.is_empty() {
        println!("{sizes}");
    }
    println!("total bench time: {:.1}s", t_all.elapsed().as_secs_f64());
    drop(server);
}

fn agent_toml(
    dir: &Path,
    name: &str,
    addr: std::net::SocketAddr,
    bundle: &Path,
    token: &str,
) -> String {
    format!(
        "trust_domain = \"{TD}\"\nserver_address = \"{addr}\"\ntrust_bundle_path = \"{}\"\n\
         join_token = \"{token}\"\ndata_dir = \"{}\"\nsocket_path = \"{}\"\n\
         admin_socket_path = \"{}\"\nlog_level = \"warn\"\n",
        bundle.display(),
        dir.join(format!("{name}-data")).display(),
        dir.join(format!("{name}/api.sock")).display(),
        dir.join(format!("{name}-admin/admin.sock")).display(),
    )
}

/// Waits until a fetch on `sock` returns `n` SVIDs.
async fn wait_fetch(sock: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ch = unix_channel(sock).await;
        let mut c = WorkloadClient::new(ch).max_decoding_message_size(256 << 20);
        if let Ok(r) = c.fetch_x509svid(wreq(wl::X509svidRequest {})).await {
            let mut s = r.into_inner();
            let got = tokio::time::timeout(Duration::from_secs(60), async {
                loop {
                    match s.message().await {
                        Ok(Some(m)) if m.svids.len() >= n => return true,
                        Ok(Some(_)) => continue,
                        _ => return false,
                    }
                }
            })
            .await;
            if matches!(got, Ok(true)) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "agent never served {n} SVIDs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect(sock: &Path) -> WorkloadClient {
    WorkloadClient::new(unix_channel(sock).await)
}

async fn fetch_first(c: &mut WorkloadClient) {
    let mut s = c
        .fetch_x509svid(wreq(wl::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let m = s.message().await.unwrap().unwrap();
    assert!(!m.svids.is_empty());
}

/// `conc` tasks, each doing `per_task` fetches back to back; returns latencies, fetches/s and
/// the agent's (`pid`) CPU microseconds per fetch.
async fn cached_fetch(
    sock: &Path,
    pid: u32,
    conc: usize,
    per_task: usize,
    new_conn: bool,
) -> (Stats, f64, f64) {
    // Open the connections first (in open-connection mode) so only fetches are timed.
    let mut clients = Vec::with_capacity(conc);
    for _ in 0..conc {
        let mut c = if new_conn {
            None
        } else {
            Some(connect(sock).await)
        };
        if let Some(c) = c.as_mut() {
            fetch_first(c).await; // warm up the connection
        }
        clients.push(c);
    }
    // Warm-up round (attestation caches, allocator).
    for _ in 0..50.min(per_task * conc) {
        let mut c = connect(sock).await;
        fetch_first(&mut c).await;
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(conc));
    let cpu0 = cpu_ns(pid);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conc);
    for c in clients {
        let sock = sock.to_owned();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut out = Vec::with_capacity(per_task);
            let mut c = c;
            for _ in 0..per_task {
                let t = Instant::now();
                match c.as_mut() {
                    Some(c) => fetch_first(c).await,
                    None => {
                        let mut c = connect(&sock).await;
                        fetch_first(&mut c).await;
                    }
                }
                out.push(t.elapsed());
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(conc * per_task);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    let cpu = (cpu_ns(pid) - cpu0) as f64 / all.len() as f64 / 1000.0;
    (Stats(all), rate, cpu)
}

async fn propagation(server: &TestServer, alias: &str, sock: &Path) -> Stats {
    let mut c = connect(sock).await;
    let mut stream = open_x509(&mut c).await;
    let mut have = next(&mut stream).await.unwrap().unwrap().svids.len();
    let mut out = Vec::new();
    let warmup = 5;
    for i in 0..PROPAGATION_ENTRIES + warmup {
        let path = format!("bench/prop/{i}");
        let want = format!("spiffe://{TD}/{path}");
        server.create_entry(entry(&path, alias, uid())).await;
        let acked = Instant::now();
        loop {
            let m = next(&mut stream).await.unwrap().unwrap();
            if m.svids.iter().any(|s| s.spiffe_id == want) {
                assert_eq!(m.svids.len(), have + 1);
                have = m.svids.len();
                break;
            }
        }
        if i >= warmup {
            out.push(acked.elapsed());
        }
        if std::env::var_os("BENCH_DEBUG").is_some() {
            eprintln!("prop {i}: {:?}", acked.elapsed());
        }
    }
    Stats(out)
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = s.rsplit_once(')').unwrap();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// CPU time `pid` has used, in nanoseconds: user plus system time of every thread, exited ones
/// included, from `/proc/<pid>/stat` (clock ticks, so read it around runs of a second or more).
fn cpu_ns(pid: u32) -> u64 {
    const NS_PER_TICK: u64 = 10_000_000; // USER_HZ is 100 on Linux
    cpu_ticks(pid) * NS_PER_TICK
}

/// Threads of `pid`, from `/proc/<pid>/status`.
fn threads(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// What one cached SVID costs on the wire.
async fn wire_sizes(sock: &Path) -> String {
    let mut c = connect(sock).await;
    let m = fetch_x509(&mut c).await;
    let s = &m.svids[0];
    format!(
        "one SVID on the wire: chain {} B ({} cert(s)), key {} B, bundle {} B",
        s.x509_svid.len(),
        split_der(&s.x509_svid).len(),
        s.x509_svid_key.len(),
        s.bundle.len()
    )
}

/// Waits until the process used no CPU for `quiet`.
async fn wait_idle(pid: u32, quiet: Duration) {
    let mut last = cpu_ticks(pid);
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = cpu_ticks(pid);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

struct ChildAgent {
    child: Child,
    sock: PathBuf,
}

impl ChildAgent {
    fn spawn(dir: &Path, name: &str, toml: &str) -> Self {
        // A previous run of this agent left its sockets behind; the agent replaces them, but a
        // waiter must not mistake them for the new agent's.
        let sock = dir.join(format!("{name}/api.sock"));
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(dir.join(format!("{name}-admin/admin.sock")));
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        // BENCH_AGENT_WRAPPER: a program that execs its arguments (keeping the pid), e.g. to
        // preload a heap profiler into the agent.
        let mut cmd = match std::env::var_os("BENCH_AGENT_WRAPPER") {
            Some(w) => {
                let mut c = Command::new(w);
                c.arg(env!("CARGO_BIN_EXE_sigil-agent"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_sigil-agent")),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child, sock }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then how long the agent took to exit (SIGKILL after 10 s).
    async fn stop(mut self) -> Result<Duration, String> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let t = Instant::now();
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        // Under a heap profiler, SIGKILL keeps the live heap as the profile's "leaks".
        let sig = if std::env::var_os("BENCH_AGENT_WRAPPER").is_some() {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        kill(pid, sig).unwrap();
        while t.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().unwrap().is_some() {
                return Ok(t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err("did not exit within 10 s of SIGTERM; killed".into())
    }
}

/// A panicking bench must not leave agents behind.
impl Drop for ChildAgent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn wait_socket(p: &Path) {
    for _ in 0..2000 {
        if p.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("agent socket {} never appeared", p.display());
}

async fn memory(server: &TestServer, dir: &Path, bundle: &Path) -> Vec<String> {
    let mut out = Vec::new();

    // 3a. Held streams, one connection each, opened in bursts of BURST.
    let hold = Duration::from_secs(
        std::env::var("BENCH_HOLD_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let alias = format!("spiffe://{TD}/node/bench-b");
    let token = server.join_token(&alias).await;
    server
        .create_entry(entry("bench/held", &alias, uid()))
        .await;
    let b = ChildAgent::spawn(dir, "b", &agent_toml(dir, "b", server.addr, bundle, &token));
    wait_socket(&b.sock).await;
    wait_fetch(&b.sock, 1).await;
    wait_idle(b.pid(), Duration::from_millis(300)).await;
    let base = rss_kib(b.pid());
    let t = Instant::now();
    let held = open_streams(&b.sock, HELD_STREAMS).await;
    let open_time = t.elapsed();
    let burst_rss = rss_kib(b.pid());
    let burst_threads = threads(b.pid());
    wait_idle(b.pid(), Duration::from_millis(300)).await;
    let idle_rss = rss_kib(b.pid());
    tokio::time::sleep(hold.saturating_sub(t.elapsed())).await;
    let hold_rss = rss_kib(b.pid());
    let hold_threads = threads(b.pid());
    out.push(format!(
        "agent RSS, idle with 1 SVID: {:.1} MiB; {HELD_STREAMS} held FetchX509SVID streams, \
         1 connection each, opened in bursts of {BURST} in {:.1}s",
        base as f64 / 1024.0,
        open_time.as_secs_f64(),
    ));
    for (when, rss, thr) in [
        ("right after the last burst", burst_rss, Some(burst_threads)),
        ("once the agent is idle", idle_rss, None),
        ("after holding them", hold_rss, Some(hold_threads)),
    ] {
        let per_stream = (rss.saturating_sub(base) * 1024) as f64 / HELD_STREAMS as f64;
        let when = if when == "after holding them" {
            format!("{when} {}s", hold.as_secs())
        } else {
            when.to_string()
        };
        out.push(format!(
            "  {when:<31}: {:>7.1} MiB{} -> {:>5.1} KB per connection = {:>6.0} streams per GiB \
             (target >= 30,000)",
            rss as f64 / 1024.0,
            thr.map(|t| format!(", {t} threads")).unwrap_or_default(),
            per_stream / 1000.0,
            (1u64 << 30) as f64 / per_stream
        ));
    }
    let stop = b.stop().await;
    out.push(format!(
        "  SIGTERM with {HELD_STREAMS} streams open: {}",
        match stop {
            Ok(d) => format!("agent exited in {} ms", d.as_millis()),
            Err(e) => e,
        }
    ));
    drop(held);

    // Same number of streams multiplexed over few connections: separates the per-connection
    // cost (HTTP/2 buffers) from the per-stream cost.
    let alias = format!("spiffe://{TD}/node/bench-m");
    let token = server.join_token(&alias).await;
    server.create_entry(entry("bench/mux", &alias, uid())).await;
    let m = ChildAgent::spawn(dir, "m", &agent_toml(dir, "m", server.addr, bundle, &token));
    wait_socket(&m.sock).await;
    wait_fetch(&m.sock, 1).await;
    wait_idle(m.pid(), Duration::from_millis(300)).await;
    let base = rss_kib(m.pid());
    let per_conn = 100;
    let held = open_streams_mux(&m.sock, HELD_STREAMS, per_conn).await;
    wait_idle(m.pid(), Duration::from_millis(300)).await;
    let with = rss_kib(m.pid());
    let per_stream = (with.saturating_sub(base) * 1024) as f64 / HELD_STREAMS as f64;
    out.push(format!(
        "  same {HELD_STREAMS} streams over {} connections ({per_conn} each): {:.1} MiB -> \
         {:.0} bytes per stream = {:.0} streams per GiB",
        HELD_STREAMS / per_conn,
        with as f64 / 1024.0,
        per_stream,
        (1u64 << 30) as f64 / per_stream
    ));
    let _ = m.stop().await;
    drop(held);

    // 3b. Cached SVIDs: measure an agent before and after it holds 10k SVIDs (restarted on
    // its data dir in between, so no re-attestation and the same process shape).
    let alias = format!("spiffe://{TD}/node/bench-c");
    let token = server.join_token(&alias).await;
    server.create_entry(entry("bench/c0", &alias, uid())).await;
    let toml = agent_toml(dir, "c", server.addr, bundle, &token);
    let c = ChildAgent::spawn(dir, "c", &toml);
    wait_socket(&c.sock).await;
    wait_fetch(&c.sock, 1).await;
    wait_idle(c.pid(), Duration::from_millis(300)).await;
    let base = rss_kib(c.pid());
    let _ = c.stop().await;

    let t = Instant::now();
    let chunk = 500;
    for start in (1..CACHED_SVIDS).step_by(chunk) {
        let end = (start + chunk).min(CACHED_SVIDS);
        let es = (start..end)
            .map(|i| entry(&format!("bench/c{i}"), &alias, uid()))
            .collect();
        server.create_entries(es).await;
    }
    let create_time = t.elapsed();
    let t = Instant::now();
    let c = ChildAgent::spawn(dir, "c", &toml);
    wait_socket(&c.sock).await;
    // Sync + signing, then quiet: measure before any workload call touches the SVIDs.
    wait_health(dir, "c").await;
    wait_idle(c.pid(), Duration::from_millis(500)).await;
    let issue_time = t.elapsed();
    let with = rss_kib(c.pid());
    // Check afterwards that the SVIDs were all there: the first message of one fetch.
    let t2 = Instant::now();
    if std::env::var_os("BENCH_AGENT_WRAPPER").is_none() {
        let got = first_count(&c.sock).await;
        assert_eq!(
            got, CACHED_SVIDS,
            "agent had not cached every SVID when measured"
        );
    }
    let verify = t2.elapsed();
    let per_svid = (with.saturating_sub(base) * 1024) as f64 / (CACHED_SVIDS - 1) as f64;
    out.push(format!(
        "agent RSS with 1 SVID: {:.1} MiB; with {CACHED_SVIDS} cached SVIDs: {:.1} MiB \
         (entries created in {:.1}s; agent start+sync+issue {:.1}s; verified by one fetch of \
         all {CACHED_SVIDS} in {:.0} ms)",
        base as f64 / 1024.0,
        with as f64 / 1024.0,
        create_time.as_secs_f64(),
        issue_time.as_secs_f64(),
        verify.as_secs_f64() * 1000.0
    ));
    out.push(format!(
        "  -> {:.0} bytes per cached SVID (incl. its entry; target <= 1536)",
        per_svid
    ));
    let _ = c.stop().await;
    out
}

/// Number of SVIDs in the first FetchX509SVID message.
async fn first_count(sock: &Path) -> usize {
    let mut c = WorkloadClient::new(unix_channel(sock).await).max_decoding_message_size(256 << 20);
    let mut s = open_x509(&mut c).await;
    s.message().await.unwrap().unwrap().svids.len()
}

/// Waits until the agent's health endpoint reports an applied sync.
async fn wait_health(dir: &Path, name: &str) {
    let path = dir.join(format!("{name}-admin/admin.sock"));
    wait_socket(&path).await;
    let ch = unix_channel(&path).await;
    let mut h = pb::health_client::HealthClient::new(ch);
    for _ in 0..6000 {
        if let Ok(r) = h.check(pb::HealthCheckRequest {}).await
            && r.get_ref().revision > 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("agent {name} never synced");
}

/// Opens `n` FetchX509SVID streams, `per_conn` on each connection.
async fn open_streams_mux(
    sock: &Path,
    n: usize,
    per_conn: usize,
) -> Vec<tonic::Streaming<wl::X509svidResponse>> {
    let mut all = Vec::with_capacity(n);
    let mut tasks = Vec::new();
    for _ in 0..n / per_conn {
        let sock = sock.to_owned();
        tasks.push(tokio::spawn(async move {
            let c = connect(&sock).await;
            let mut v = Vec::with_capacity(per_conn);
            for _ in 0..per_conn {
                let mut c = c.clone();
                let mut s = open_x509(&mut c).await;
                s.message().await.unwrap().unwrap();
                v.push(s);
            }
            v
        }));
    }
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Connections opened at once per burst in part 3a, as workloads reconnecting together.
const BURST: usize = 64;

/// Opens `n` FetchX509SVID streams, one connection each, [`BURST`] at a time: each burst
/// connects, opens its streams and reads their first messages concurrently, and the next burst
/// starts when the last of them has.
async fn open_streams(
    sock: &Path,
    n: usize,
) -> Vec<(WorkloadClient, tonic::Streaming<wl::X509svidResponse>)> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let burst = BURST.min(n - all.len());
        let tasks: Vec<_> = (0..burst)
            .map(|_| {
                let sock = sock.to_owned();
                tokio::spawn(async move {
                    let mut c = connect(&sock).await;
                    let mut s = open_x509(&mut c).await;
                    let m = s.message().await.unwrap().unwrap();
                    assert_eq!(m.svids.len(), 1);
                    (c, s)
                })
            })
            .collect();
        for t in tasks {
            all.push(t.await.unwrap());
        }
    }
    all
}
