//! Helpers shared by the integration tests.

// Each test binary compiles this module and uses only some of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A free loopback port, never the same twice in this process: tests run in parallel, and
/// a port handed to one server could otherwise be handed to another before it binds it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// `GET path` on a local HTTP port, over a plain TCP socket; the whole reply.
#[allow(dead_code)] // not every test binary speaks HTTP
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    reply
}

/// POSTs `body` to a local HTTP port; returns the status line.
pub fn http_post(port: u16, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    reply.lines().next().unwrap_or_default().to_string()
}

/// Writes Avro's variable-length zig-zag long, by hand, so that test messages do not come
/// from the codec under test.
#[allow(dead_code)] // not every test binary speaks Avro
pub fn avro_long(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads an Avro long at `pos`, moving `pos` past it.
#[allow(dead_code)] // not every test binary speaks Avro
pub fn read_avro_long(bytes: &[u8], pos: &mut usize) -> i64 {
    let (mut n, mut shift) = (0u64, 0);
    loop {
        let b = bytes[*pos];
        *pos += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            break;
        }
        shift += 7;
    }
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// Waits until something listens on loopback `port`, failing the test after 30 s.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit, failing the test with `what` after 60 s.
pub fn exit_within_a_minute(
    child: &mut std::process::Child,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end within a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a process with `spawn` once per wait and SIGKILLs it after that wait, until one
/// ends by itself first. Returns how many were killed.
pub fn kill_after_each(waits_ms: &[u64], mut spawn: impl FnMut() -> std::process::Child) -> usize {
    let mut kills = 0;
    for &wait in waits_ms {
        let mut child = spawn();
        std::thread::sleep(Duration::from_millis(wait));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    kills
}

/// The integer `field` of every row of the JSON-lines files in folder `dir` (a `file`
/// sink's output).
pub fn json_lines_field(dir: &std::path::Path, field: &str) -> Vec<i64> {
    let mut values = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        for line in std::fs::read_to_string(entry.unwrap().path())
            .unwrap()
            .lines()
        {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            values.push(row[field].as_i64().unwrap());
        }
    }
    values
}

/// Creates `topic` with `partitions` on the Kafka-protocol broker at `bootstrap`.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .create()
        .unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// The value of `metric{pipeline="name"}` in a Prometheus text reply.
pub fn sample(metrics: &str, metric: &str, pipeline: &str) -> Option<f64> {
    let prefix = format!("{metric}{{pipeline=\"{pipeline}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// A `sluice serve` on free loopback ports, with its data dir `data`; killed when dropped,
/// so that a failed assert leaves no server running.
pub struct Served {
    child: std::process::Child,
    /// Its gRPC port.
    pub grpc: u16,
    /// Its HTTP port (`/metrics`).
    pub http: u16,
}

impl Served {
    pub fn start(data: &std::path::Path) -> Self {
        Self::start_with(data, &[])
    }

    /// A server given the flags `extra` too.
    pub fn start_with(data: &std::path::Path, extra: &[&str]) -> Self {
        let (grpc, http) = (free_port(), free_port());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--listen", &format!("127.0.0.1:{grpc}")])
            .args(["--http", &format!("127.0.0.1:{http}"), "--data-dir"])
            .arg(data)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(http, "sluice serve");
        Self { child, grpc, http }
    }

    /// Runs `sql` through `sluice sql -c`, failing the test if it fails.
    pub fn sql(&self, sql: &str) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "sql",
                "--server",
                &format!("127.0.0.1:{}", self.grpc),
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps every core busy while it lives: one spinning thread per core, at the priority of
/// the test. Crash and restart tests run under it, so that a race between a checkpoint, an
/// acknowledgement and a kill shows on a loaded machine too, not only on an idle one.
pub struct CpuHog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl CpuHog {
    /// Starts one spinning thread per core (`SLUICE_TEST_NO_HOG=1` starts none).
    pub fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let n = if std::env::var_os("SLUICE_TEST_NO_HOG").is_some() {
            0
        } else {
            cores
        };
        let threads = (0..n)
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut spins = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                    spins
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
