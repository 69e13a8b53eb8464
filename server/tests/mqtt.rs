//! The `mqtt` connector against a Mosquitto that wants a login: the test starts its own
//! broker (the machine's `mosquitto` binary) on a free loopback port with a password file
//! and no anonymous access, so only a client that sends the URL's user and password gets
//! through. If Mosquitto cannot be started the test fails and says so.

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::free_port;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// A Mosquitto on a free port that lets in `sensor` with password `p@ss:word` only.
struct Broker {
    child: Child,
    port: u16,
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
        let child = Command::new("mosquitto")
            .args(["-c", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("mosquitto cannot start: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_broker_that_wants_a_login_gets_the_urls_user_and_password() {
    let broker = Broker::start();
    let port = broker.port;
    let mut opts = MqttOptions::new("test-client", "127.0.0.1", port);
    opts.set_credentials(USER, PASSWORD);
    let (client, mut events) = AsyncClient::new(opts, 100);
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
