"""Interop check: Parquet written by `sluice run` is read by DuckDB and pyarrow, and the
windowed results equal DuckDB's own batch answer over the same input rows.

Usage: python3 tests/interop/check_parquet.py SLUICE_BINARY
Runs TUMBLE over CSV, HOP over JSON lines and SESSION over Parquet input."""

import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import pyarrow.dataset as ds

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT / "examples" / "data" / "bids.csv"


def main(sluice: str) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="sluice-interop-"))
    con = duckdb.connect()
    con.sql(f"COPY (SELECT * FROM read_csv('{CSV}', header=true)) TO '{tmp}/bids.parquet' (FORMAT parquet)")
    con.sql(
        f"COPY (SELECT auction, bidder, price, channel, strftime(date_time, '%Y-%m-%dT%H:%M:%SZ') AS date_time "
        f"FROM read_csv('{CSV}', header=true)) TO '{tmp}/bids.jsonl' (FORMAT json)"
    )
    script = tmp / "check.sql"
    script.write_text(f"""
CREATE SOURCE cbids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND) WITH (connector = 'file', path = '{CSV}', format = 'csv');
CREATE SOURCE jbids (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND) WITH (connector = 'file', path = '{tmp}/bids.jsonl', format = 'json');
CREATE SOURCE pbids (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP,
  WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND) WITH (connector = 'file', path = '{tmp}/bids.parquet', format = 'parquet');
CREATE SINK tumble WITH (connector = 'parquet', path = '{tmp}/out/tumble') AS
  SELECT auction, window_start, window_end, count(*) AS n, max(price) AS top FROM TUMBLE(cbids, date_time, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end;
CREATE SINK hop WITH (connector = 'parquet', path = '{tmp}/out/hop') AS
  SELECT channel, window_start, window_end, count(*) AS n, sum(price) AS total FROM HOP(jbids, date_time, INTERVAL '10' SECOND, INTERVAL '30' SECOND) GROUP BY channel, window_start, window_end;
CREATE SINK sess WITH (connector = 'parquet', path = '{tmp}/out/sess') AS
  SELECT auction, window_start, window_end, count(*) AS n, max(price) AS top FROM SESSION(pbids, date_time, INTERVAL '4' SECOND) GROUP BY auction, window_start, window_end;
""")
    subprocess.run([sluice, "run", "--quiet", str(script)], check=True)
    expected = {
        "tumble": f"""SELECT auction, time_bucket(INTERVAL 10 SECOND, date_time) AS ws, ws + INTERVAL 10 SECOND, count(*), max(price)
                      FROM read_csv('{CSV}', header=true) GROUP BY ALL ORDER BY ALL""",
        "hop": f"""SELECT channel, ws, ws + INTERVAL 30 SECOND, count(*), sum(price) FROM (
                     SELECT channel, price, unnest(generate_series(time_bucket(INTERVAL 10 SECOND, date_time::TIMESTAMP) - INTERVAL 20 SECOND,
                                                                   time_bucket(INTERVAL 10 SECOND, date_time::TIMESTAMP), INTERVAL 10 SECOND)) AS ws
                     FROM read_json('{tmp}/bids.jsonl')) GROUP BY ALL ORDER BY ALL""",
        "sess": f"""WITH t AS (SELECT auction, price, bidder, date_time,
                               CASE WHEN lag(date_time) OVER w IS NULL OR date_time - lag(date_time) OVER w >= INTERVAL 4 SECOND THEN 1 ELSE 0 END AS brk
                             FROM '{tmp}/bids.parquet' WINDOW w AS (PARTITION BY auction ORDER BY date_time, price, bidder)),
                    s AS (SELECT *, sum(brk) OVER (PARTITION BY auction ORDER BY date_time, price, bidder ROWS UNBOUNDED PRECEDING) AS sid FROM t)
                    SELECT auction, min(date_time), max(date_time) + INTERVAL 4 SECOND, count(*), max(price) FROM s GROUP BY auction, sid ORDER BY ALL""",
    }
    failed = 0
    for name, sql in expected.items():
        folder = tmp / "out" / name
        arrow_rows = ds.dataset(str(folder), format="parquet").to_table().num_rows
        got = con.sql(f"SELECT * FROM '{folder}/*.parquet' ORDER BY ALL").fetchall()
        want = con.sql(sql).fetchall()
        ok = got == want and arrow_rows == len(want) and len(want) > 0
        failed += not ok
        print(f"{'ok' if ok else 'FAILED':6}  {name}: duckdb {len(got)} rows, pyarrow {arrow_rows} rows, batch answer {len(want)} rows")
    print(f"interop: {len(expected) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
