//! NATS JetStream -> a filter -> NATS, against the machine's own NATS server with
//! JetStream (127.0.0.1:4222). The source acknowledges messages only once the checkpoint
//! that covers them is complete; the test checks the output and that nothing is left
//! unacknowledged. If NATS is down the test fails and says so.

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;

const NATS: &str = "nats://127.0.0.1:4222";

#[tokio::test]
async fn jetstream_messages_filtered_into_nats() {
    let client = async_nats::connect(NATS)
        .await
        .unwrap_or_else(|e| panic!("NATS is not reachable at {NATS}: {e}"));
    let js = jetstream::new(client.clone());
    let run = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let stream_name = format!("SLUICE_IN_{run}");
    let input = format!("sluice.in.{run}");
    let output = format!("sluice.out.{run}");
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![input.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut want = BTreeSet::new();
    for id in 0..1000i64 {
        let value = (id * 7) % 100;
        if value >= 50 {
            want.insert(id);
        }
        js.publish(
            input.clone(),
            format!(r#"{{"id": {id}, "value": {value}}}"#).into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mut out = client.subscribe(output.clone()).await.unwrap();
    client.flush().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE SOURCE readings (id BIGINT, value BIGINT)
             WITH (connector = 'nats', servers = '{NATS}', subject = '{input}', stream = '{stream_name}',
                   format = 'json', linger = '50ms');
             CREATE SINK hot WITH (connector = 'nats', servers = '{NATS}', subject = '{output}', format = 'json') AS
             SELECT id, value FROM readings WHERE value >= 50;"
        ),
    )
    .unwrap();
    let mut sluice = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", script.to_str().unwrap(), "--quiet", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--checkpoint-interval", "300ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < want.len() && Instant::now() < deadline {
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), out.next()).await {
            let row: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            assert!(row["value"].as_i64().unwrap() >= 50, "{row}");
            got.insert(row["id"].as_i64().unwrap());
        }
    }
    // Every message is acknowledged once a checkpoint covers it.
    let consumer = format!("sluice-{stream_name}");
    let mut info = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let i = stream.consumer_info(&consumer).await.unwrap();
        if i.num_ack_pending == 0 && i.num_pending == 0 {
            info = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = sluice.kill();
    let _ = sluice.wait();
    let _ = js.delete_stream(&stream_name).await;
    assert_eq!(got, want, "filtered messages");
    assert!(info.is_some(), "messages left unacknowledged");
}

/// A value of a nullable Avro long (`["null", "long"]`, the union Sluice derives for a
/// nullable BIGINT column): the branch index 1, then the zig-zag varint, written by hand.
fn avro_nullable_long(out: &mut Vec<u8>, v: i64) {
    out.push(2);
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_avro_nullable_long(bytes: &[u8], pos: &mut usize) -> Option<i64> {
    let branch = bytes[*pos];
    *pos += 1;
    if branch == 0 {
        return None;
    }
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
    Some(((n >> 1) as i64) ^ -((n & 1) as i64))
}

#[tokio::test]
async fn plain_avro_through_jetstream_and_nats() {
    let client = async_nats::connect(NATS)
        .await
        .unwrap_or_else(|e| panic!("NATS is not reachable at {NATS}: {e}"));
    let js = jetstream::new(client.clone());
    let run = format!(
        "avro_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let stream_name = format!("SLUICE_IN_{run}");
    let input = format!("sluice.in.{run}");
    let output = format!("sluice.out.{run}");
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream_name.clone(),
        subjects: vec![input.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut want = BTreeSet::new();
    for id in 0..500i64 {
        let value = (id * 13) % 100 - 50;
        if value >= 0 {
            want.insert((id, value));
        }
        let mut datum = Vec::new();
        avro_nullable_long(&mut datum, id);
        avro_nullable_long(&mut datum, value);
        js.publish(input.clone(), datum.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // One message that is not a record of the schema: skipped and counted, not fatal.
    js.publish(input.clone(), vec![2u8].into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut out = client.subscribe(output.clone()).await.unwrap();
    client.flush().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE SOURCE readings (id BIGINT, value BIGINT)
             WITH (connector = 'nats', servers = '{NATS}', subject = '{input}', stream = '{stream_name}',
                   format = 'avro', linger = '50ms');
             CREATE SINK positive WITH (connector = 'nats', servers = '{NATS}', subject = '{output}', format = 'avro') AS
             SELECT id, value FROM readings WHERE value >= 0;"
        ),
    )
    .unwrap();
    let mut sluice = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", script.to_str().unwrap(), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < want.len() && Instant::now() < deadline {
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), out.next()).await {
            let mut pos = 0;
            let id = read_avro_nullable_long(&msg.payload, &mut pos).unwrap();
            let value = read_avro_nullable_long(&msg.payload, &mut pos).unwrap();
            assert_eq!(pos, msg.payload.len(), "bytes left over after the record");
            got.insert((id, value));
        }
    }
    let _ = sluice.kill();
    let _ = sluice.wait();
    let _ = js.delete_stream(&stream_name).await;
    assert_eq!(got, want, "filtered avro records");
}
