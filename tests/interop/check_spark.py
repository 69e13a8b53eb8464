"""Interop check: Spark (pyspark from PyPI, on the machine's Java) reads the Parquet that
`sluice run` writes, and its values equal DuckDB's over the same folders.

Usage: python3 tests/interop/check_spark.py SLUICE_BINARY
Reads a TUMBLE sink (window_start and window_end are timestamps), a `partition_by` sink
whose partition values hold characters Hive escapes, and a COPY export."""

import datetime
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT / "examples" / "data" / "bids.csv"


def norm(rows):
    """Rows as sorted tuples; timestamps as naive UTC datetimes."""
    out = []
    for r in rows:
        t = []
        for v in r:
            if isinstance(v, datetime.datetime) and v.tzinfo is not None:
                v = v.astimezone(datetime.timezone.utc).replace(tzinfo=None)
            t.append(v)
        out.append(tuple(t))
    return sorted(out, key=repr)


def main(sluice: str) -> int:
    os.environ["TZ"] = "UTC"
    tmp = Path(tempfile.mkdtemp(prefix="sluice-spark-"))
    tags = tmp / "tags.csv"
    tags.write_text("id,tag\n1,a:b\n2,x/y\n3,sp ace\n4,a:b\n5,50%\n")
    script = tmp / "check.sql"
    script.write_text(f"""
CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND) WITH (connector = 'file', path = '{CSV}', format = 'csv');
CREATE SOURCE tags (id BIGINT, tag VARCHAR) WITH (connector = 'file', path = '{tags}', format = 'csv');
CREATE SINK tumble WITH (connector = 'parquet', path = '{tmp}/out/tumble') AS
  SELECT auction, window_start, window_end, count(*) AS n, max(price) AS top FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end;
CREATE SINK parted WITH (connector = 'parquet', path = '{tmp}/out/parted', partition_by = 'tag') AS SELECT id, tag FROM tags;
CREATE MATERIALIZED VIEW top AS SELECT auction, window_start, max(price) AS top FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY auction, window_start;
COPY (SELECT * FROM top) TO '{tmp}/out/copy.parquet' (FORMAT parquet);
""")
    subprocess.run([sluice, "run", "--quiet", str(script)], check=True)

    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[1]")
        .appName("sluice-interop")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "512m")
        .getOrCreate()
    )
    con = duckdb.connect()
    con.sql("SET TimeZone = 'UTC'")
    failed = 0

    def check(name, spark_rows, duck_rows, batch_rows=None):
        nonlocal failed
        got, duck = norm(spark_rows), norm(duck_rows)
        if got != duck:
            failed += 1
            print(f"FAILED spark {name}: Spark read {len(got)} rows, DuckDB {len(duck)}; first Spark {got[:2]}, DuckDB {duck[:2]}")
        elif batch_rows is not None and norm(batch_rows) != duck:
            failed += 1
            print(f"FAILED spark {name}: the files differ from DuckDB's batch answer")
        else:
            print(f"ok spark {name}: {len(got)} rows")

    folder = tmp / "out" / "tumble"
    cols = "auction, window_start, window_end, n, top"
    check(
        "tumble",
        [tuple(r) for r in spark.read.parquet(str(folder)).select(*cols.split(", ")).collect()],
        con.sql(f"SELECT {cols} FROM '{folder}/*.parquet'").fetchall(),
        con.sql(f"""SELECT auction, time_bucket(INTERVAL 10 SECOND, date_time) AS ws, ws + INTERVAL 10 SECOND, count(*), max(price)
                    FROM read_csv('{CSV}', header=true) GROUP BY ALL""").fetchall(),
    )
    folder = tmp / "out" / "parted"
    check(
        "partition_by",
        [(r["id"], r["tag"]) for r in spark.read.parquet(str(folder)).collect()],
        con.sql(f"SELECT id, tag FROM read_parquet('{folder}/*/*.parquet', hive_partitioning = true)").fetchall(),
        con.sql(f"SELECT id, tag FROM read_csv('{tags}', header=true)").fetchall(),
    )
    copy = tmp / "out" / "copy.parquet"
    check(
        "copy",
        [tuple(r) for r in spark.read.parquet(str(copy)).select("auction", "window_start", "top").collect()],
        con.sql(f"SELECT auction, window_start, top FROM '{copy}'").fetchall(),
    )
    spark.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
