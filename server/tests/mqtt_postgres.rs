//! MQTT sensor readings -> a HOP average -> the PostgreSQL sink with upserts, against the
//! machine's own Mosquitto (127.0.0.1:1883) and PostgreSQL (127.0.0.1:5432, trust auth).
//! The table is checked with SQL. If either service is down the test fails and says so.

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const BASE_MS: i64 = 1_704_067_200_000;

async fn postgres() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {PG_URL}: {e}"));
    tokio::spawn(conn);
    client
}

/// Reading `i` of the test: sensor, value, event time in ms.
fn reading(i: i64) -> (i64, f64, i64) {
    (i % 3 + 1, ((i * 37) % 100) as f64 / 4.0, BASE_MS + i * 100)
}

#[tokio::test]
async fn mqtt_readings_hop_average_upserted_into_postgres() {
    assert!(
        std::net::TcpStream::connect("127.0.0.1:1883").is_ok(),
        "Mosquitto is not running on 127.0.0.1:1883"
    );
    let pg = postgres().await;
    let run = format!(
        "{}_{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let table = format!("hop_avg_{run}");
    let topic = format!("sluice-test-{run}");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE SOURCE readings (sensor BIGINT, reading DOUBLE, ts TIMESTAMP,
                WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
             WITH (connector = 'mqtt', url = 'mqtt://127.0.0.1:1883', topic = '{topic}/+', qos = 1,
                   format = 'json', linger = '50ms');
             CREATE SINK averages WITH (connector = 'postgres', url = '{PG_URL}', table = '{table}',
                   primary_key = 'sensor, window_start') AS
             SELECT sensor, window_start, window_end, avg(reading) AS avg_reading, count(*) AS n
             FROM HOP(readings, ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND)
             GROUP BY sensor, window_start, window_end;
             CREATE SINK totals WITH (connector = 'postgres', url = '{PG_URL}', table = '{table}_totals',
                   primary_key = 'sensor') AS
             SELECT sensor, count(*) AS n, max(reading) AS top FROM readings GROUP BY sensor;"
        ),
    )
    .unwrap();
    let mut sluice = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", script.to_str().unwrap(), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The sinks create their tables when they open; the sources subscribe right after.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg
        .query_opt(
            "SELECT 1 FROM pg_tables WHERE tablename = $1",
            &[&format!("{table}_totals")],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "the sink did not create {table}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Publish 600 readings (60 s of event time over three sensors), then one far ahead
    // that closes every window of the first 60 s.
    let mut opts = MqttOptions::new(format!("sluice-test-pub-{run}"), "127.0.0.1", 1883);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(opts, 2000);
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < 601 {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                acked += 1;
            }
        }
    });
    let publish = |i: i64| {
        let (sensor, value, ms) = reading(i);
        let payload = format!(r#"{{"sensor": {sensor}, "reading": {value}, "ts": {ms}}}"#);
        (format!("{topic}/{sensor}"), payload)
    };
    for i in (0..600).chain([1200]) {
        let (t, p) = publish(i);
        client.publish(t, QoS::AtLeastOnce, false, p).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), acks)
        .await
        .expect("the broker acknowledged every reading")
        .unwrap();

    // The batch answer, for every window that ends by 60 s.
    let mut want: BTreeMap<(i64, i64), (f64, i64)> = BTreeMap::new();
    for i in 0..600 {
        let (sensor, value, ms) = reading(i);
        let last = ms.div_euclid(5000) * 5000;
        for start in [last - 5000, last] {
            let e = want.entry((sensor, start)).or_insert((0.0, 0));
            e.0 += value;
            e.1 += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let rows = pg
            .query(
                &format!(
                    "SELECT sensor, (extract(epoch FROM window_start) * 1000)::int8, avg_reading, n
                     FROM \"{table}\" WHERE window_start < to_timestamp($1::float8 / 1000)::timestamp"
                ),
                &[&((BASE_MS + 60_000) as f64)],
            )
            .await
            .unwrap();
        let got: BTreeMap<(i64, i64), (f64, i64)> = rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
            .collect();
        if got.len() >= want.len() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The updating query keeps the latest row per sensor, upserted after every batch.
    let deadline = Instant::now() + Duration::from_secs(30);
    let totals = loop {
        let rows = pg
            .query(
                &format!("SELECT sensor, n FROM \"{table}_totals\" ORDER BY sensor"),
                &[],
            )
            .await
            .unwrap();
        let totals: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if totals == [(1, 201), (2, 200), (3, 200)] || Instant::now() > deadline {
            break totals;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = sluice.kill();
    let _ = sluice.wait();
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS \"{table}\"; DROP TABLE IF EXISTS \"{table}_totals\""
    ))
    .await
    .unwrap();
    assert_eq!(
        totals,
        [(1, 201), (2, 200), (3, 200)],
        "one row per sensor, the latest"
    );
    assert_eq!(got.len(), want.len(), "windows in PostgreSQL");
    for (key, (sum, n)) in &want {
        let (avg, count) = got[key];
        assert_eq!(count, *n, "count of {key:?}");
        assert!(
            (avg - sum / *n as f64).abs() < 1e-9,
            "avg of {key:?}: {avg}"
        );
    }
}
