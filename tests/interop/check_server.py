"""Clients nobody here wrote, against a real `sluice serve`: pyarrow + adbc-driver-flightsql
create a source and a materialized view and read it back over Arrow Flight SQL; grpcio's
reflection client lists the services without the .proto files.

Usage: python3 tests/interop/check_server.py SLUICE_BINARY"""

import socket
import subprocess
import sys
import tempfile
import time

import adbc_driver_flightsql.dbapi as flight_sql
import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(sluice: str) -> int:
    data_dir = tempfile.mkdtemp(prefix="sluice-server-")
    grpc_port, http_port = free_port(), free_port()
    server = subprocess.Popen(
        [sluice, "serve", "--listen", f"127.0.0.1:{grpc_port}", "--http", f"127.0.0.1:{http_port}", "--data-dir", data_dir],
        stdout=subprocess.DEVNULL,
    )
    checks = []
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", grpc_port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

        with flight_sql.connect(f"grpc://127.0.0.1:{grpc_port}") as conn, conn.cursor() as cur:
            cur.execute("""CREATE SOURCE readings (sensor BIGINT, reading BIGINT, ts TIMESTAMP,
                               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
                           WITH (connector = 'generator', rows = 100000, seed = 9,
                                 'fields.sensor.kind' = 'random', 'fields.sensor.start' = 1, 'fields.sensor.end' = 10,
                                 'fields.ts.start' = '2024-01-01T00:00:00Z', 'fields.ts.interval_ms' = 1)""")
            cur.fetchall()
            cur.execute("""CREATE MATERIALIZED VIEW per_sensor AS
                           SELECT sensor, window_start, count(*) AS n, max(reading) AS top
                           FROM TUMBLE(readings, ts, INTERVAL '10' SECOND) GROUP BY sensor, window_start""")
            cur.fetchall()
            total = 0
            while time.time() < deadline + 30:
                cur.execute("SELECT coalesce(sum(n), 0) AS n FROM per_sensor")
                total = cur.fetchall()[0][0]
                if total == 100000:
                    break
                time.sleep(0.2)
            checks.append(("materialized view complete over ADBC", total == 100000, f"sum(n) = {total}"))
            cur.execute("SELECT * FROM per_sensor")
            table = cur.fetch_arrow_table()
            checks.append(("SELECT * returns an Arrow table", table.num_rows == 100 and table.column_names == ["sensor", "window_start", "n", "top"],
                           f"{table.num_rows} rows, columns {table.column_names}"))
            objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
            names = [t["table_name"] for c in objects for s in c["catalog_db_schemas"] or [] for t in s["db_schema_tables"] or []]
            checks.append(("tables listed through Flight SQL metadata", "per_sensor" in names and "readings" in names, f"{names}"))
            try:
                cur.execute("SELEC nonsense")
                checks.append(("bad SQL is an error", False, "no error raised"))
            except Exception as e:  # the driver's own error type
                checks.append(("bad SQL is an error", "syntax error" in str(e), str(e).splitlines()[0][:120]))

        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = [s.name for r in responses for s in r.list_services_response.service]
        wanted = {"sluice.v1.SluiceService", "grpc.health.v1.Health"}
        checks.append(("reflection lists the services", wanted <= set(services), f"{services}"))
    finally:
        server.terminate()
        code = server.wait(timeout=30)
        checks.append(("SIGTERM stops the server cleanly", code == 0, f"exit {code}"))

    failed = 0
    for name, ok, detail in checks:
        failed += not ok
        print(f"{'ok' if ok else 'FAILED':6}  {name}: {detail}")
    print(f"server interop: {len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
