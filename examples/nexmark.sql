-- Live windowed aggregation over the built-in Nexmark generator: bids per named channel every
-- 2 seconds of event time, generated at 5,000 bids per second. Runs until Ctrl-C.
CREATE SOURCE bids (WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
WITH (connector = 'nexmark', table = 'bid', events_per_second = 5000, rows_per_second = 5000);

SELECT channel, window_start, window_end, count(*) AS bids, max(price) AS max_price,
       approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY price) AS median_price
FROM TUMBLE(bids, date_time, INTERVAL '2' SECOND)
WHERE channel IN ('Google', 'Facebook', 'Baidu', 'Apple')
GROUP BY channel, window_start, window_end;
