-- One quote body sent again and again by `wrk` (bench/quote.py's C client): the same cart
-- bench/quote.py's Python client sends, one request at a time per connection.
-- Environment: LOYALTY_TOKEN (the API key), LOYALTY_BODY (the request's JSON body).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  refused = 0
  wrk.method = "POST"
  wrk.body = os.getenv("LOYALTY_BODY")
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("LOYALTY_TOKEN")
  wrk.headers["Content-Type"] = "application/json"
end

function response(status, headers, body)
  if status ~= 200 then
    refused = refused + 1
  end
end

function done(summary, latency, requests)
  local refused_all = 0
  for _, thread in ipairs(threads) do
    refused_all = refused_all + thread:get("refused")
  end
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f refused=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration / 1e6, refused_all,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
