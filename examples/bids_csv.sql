-- Windowed aggregation over a CSV file: bids per auction in 10-second windows.
CREATE SOURCE bids (
    auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP,
    WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND
) WITH (connector = 'file', path = 'examples/data/bids.csv', format = 'csv');

CREATE SINK bids_per_auction WITH (connector = 'parquet', path = 'out/bids_per_auction') AS
SELECT auction, window_start, window_end, count(*) AS bids, max(price) AS max_price
FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND)
GROUP BY auction, window_start, window_end;

SELECT channel, window_start, window_end, count(*) AS bids, avg(price) AS avg_price
FROM HOP(bids, date_time, INTERVAL '10' SECOND, INTERVAL '30' SECOND)
WHERE price > 100
GROUP BY channel, window_start, window_end;
