//! The `mqtt` connector against a Mosquitto that wants a login: the tests start their own
//! broker (the machine's `mosquitto` binary) on a free loopback port with a password file
//! and no anonymous access, so only a client that sends the URL's user and password gets
//! through; one stops and restarts it under a running `sluice serve`. If Mosquitto cannot
//! be started the tests fail and say so.

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{Served, free_port, http_get, sample, wait_for_port};

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// A Mosquitto on a free port that lets in `sensor` with password `p@ss:word` only.
struct Broker {
    child: Child,
    port: u16,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

const USER: &str = "sensor";
const PASSWORD: &str = "p@ss:word";

impl Broker {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let passwords = dir.path().join("passwords");
        let made = Command::new("mosquitto_passwd")
            .args(["-b", "-c", passwords.to_str().unwrap(), USER, PASSWORD])
            .status()
            .unwrap_or_else(|e| panic!("mosquitto_passwd cannot run: {e}"));
        assert!(made.success(), "mosquitto_passwd failed");
        let port = free_port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
                passwords.display()
            ),
        )
        .unwrap();
        let child = Self::spawn(&config, port);
        Self {
            child,
            port,
            config,
            _dir: dir,
        }
    }

    fn spawn(config: &std::path::Path, port: u16) -> Child {
        // Its log, beside its config, says why if it does not start.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.with_file_name("mosquitto.log"))
            .unwrap();
        let child = Command::new("mosquitto")
            .args(["-c", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("mosquitto cannot start: {e}"));
        wait_for_port(port, "mosquitto");
        child
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port (it keeps no messages: not persistent).
    fn restart(&mut self) {
        self.child = Self::spawn(&self.config, self.port);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test client of the broker, logged in.
fn client(port: u16, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_credentials(USER, PASSWORD);
    AsyncClient::new(opts, 100)
}

/// Publishes `count` readings from a fresh client and waits until they are sent.
async fn publish(port: u16, count: i64) {
    let (client, mut events) = client(port, "test-publisher");
    for id in 0..count {
        client
            .publish(
                "in/1",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"id": {id}}}"#),
            )
            .await
            .unwrap();
    }
    client.disconnect().await.unwrap();
    // Drive the connection until the disconnect went out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), events.poll()).await {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) => break,
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_broker_that_wants_a_login_gets_the_urls_user_and_password() {
    let broker = Broker::start();
    let port = broker.port;
    let (client, mut events) = client(port, "test-client");
    client.subscribe("out", QoS::AtLeastOnce).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p.payload);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });

    // The password holds '@' and ':', percent-encoded in the URL as a user would.
    let url = format!("mqtt://{USER}:p%40ss%3Aword@127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE SOURCE readings (id BIGINT, v BIGINT)
                 WITH (connector = 'mqtt', url = '{url}', topic = 'in/+', format = 'json', linger = '20ms');
             CREATE SINK doubled WITH (connector = 'mqtt', url = '{url}', topic = 'out', format = 'json') AS
                 SELECT id, v * 2 AS v FROM readings;"
        ),
    )
    .unwrap();
    let mut sluice = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", script.to_str().unwrap(), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // Publish until Sluice's subscription is up and the rows come back.
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0i64;
    while got.len() < 20 && Instant::now() < deadline {
        for id in 0..20i64 {
            client
                .publish(
                    format!("in/{}", id % 3),
                    QoS::AtLeastOnce,
                    false,
                    format!(r#"{{"id": {id}, "v": {}}}"#, id + round),
                )
                .await
                .unwrap();
        }
        round += 1000;
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(Some(payload)) = tokio::time::timeout_at(until.into(), rx.recv()).await {
            let row: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            let (id, v) = (row["id"].as_i64().unwrap(), row["v"].as_i64().unwrap());
            assert_eq!(v % 2, 0, "{row}");
            assert_eq!((v / 2 - id) % 1000, 0, "{row}");
            got.insert(id);
        }
    }
    let _ = sluice.kill();
    let _ = sluice.wait();
    assert_eq!(
        got,
        (0..20).collect(),
        "rows through a broker that wants a login"
    );
}

/// The broker stopped under a running `sluice serve` and started again: the source counts
/// the failed reconnects in `sluice_connector_errors_total`, and reads again once the
/// broker is back, with no restart of the pipeline.
#[tokio::test]
async fn a_broker_gone_is_counted_and_the_source_comes_back_with_it() {
    // The kills land on a loaded machine too: every core is kept busy.
    let _hog = common::CpuHog::start();
    let mut broker = Broker::start();
    let port = broker.port;
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(&dir.path().join("data"));
    let http = server.http;
    let url = format!("mqtt://{USER}:p%40ss%3Aword@127.0.0.1:{port}");
    let ddl = format!(
        "CREATE SOURCE readings (id BIGINT)
             WITH (connector = 'mqtt', url = '{url}', topic = 'in/+', format = 'json', linger = '20ms');
         CREATE MATERIALIZED VIEW seen AS SELECT id FROM readings;"
    );
    server.sql(&ddl);
    let metric = |name: &str| sample(&http_get(http, "/metrics"), name, "seen");
    // Publish until the source's subscription is up and rows come in.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric("sluice_rows_in_total").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "no rows before the outage");
        publish(port, 5).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(metric("sluice_connector_errors_total"), Some(0.0));

    broker.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric("sluice_connector_errors_total").unwrap_or(0.0) < 2.0 {
        assert!(
            Instant::now() < deadline,
            "no errors counted while the broker is down: {}",
            http_get(http, "/metrics")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // DescribePipeline tells the same.
    let mut client = sluice_proto::v1::sluice_service_client::SluiceServiceClient::connect(
        format!("http://127.0.0.1:{}", server.grpc),
    )
    .await
    .unwrap();
    let described = client
        .describe_pipeline(sluice_proto::v1::PipelineRequest {
            name: "seen".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        described.connector_errors >= 2,
        "DescribePipeline says {} connector errors",
        described.connector_errors
    );
    broker.restart();
    let before = metric("sluice_rows_in_total").unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric("sluice_rows_in_total").unwrap_or(0.0) <= before {
        assert!(
            Instant::now() < deadline,
            "no rows after the broker came back"
        );
        publish(port, 5).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(metric("sluice_pipeline_running"), Some(1.0));
}
