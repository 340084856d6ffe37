-- Purchases of 3-5 lines for `wrk`, each with an id no other request of the run uses (the
-- run's tag, the thread, a counter and the position in its batch), for customers
-- auto-enrolled on their first purchase: the requests bench/earn_http.py and
-- bench/batch_ingest.py's Python clients send.
-- Environment: LOYALTY_TOKEN (the API key), LOYALTY_RUN (a tag unique to the run),
-- LOYALTY_MEMBERS (default 1000), LOYALTY_BATCH (0, the default: one purchase per request to
-- POST .../events, answered 201; n: n purchases per request to POST .../events:batch,
-- answered 200). With LOYALTY_BODY set, every request sends that body instead, answered 200
-- (bench/quote.py's quotes).

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("thread_no", counter)
  table.insert(threads, thread)
end

function init(args)
  token = os.getenv("LOYALTY_TOKEN")
  run = os.getenv("LOYALTY_RUN")
  members = tonumber(os.getenv("LOYALTY_MEMBERS") or "1000")
  batch = tonumber(os.getenv("LOYALTY_BATCH") or "0")
  fixed_body = os.getenv("LOYALTY_BODY")
  expected = (fixed_body or batch > 0) and 200 or 201
  math.randomseed(thread_no * 7919)
  sent = 0
  refused = 0
  headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}
end

local function purchase(n)
  local lines = {}
  local total = 0
  for i = 1, math.random(3, 5) do
    local quantity = math.random(1, 3)
    local price = math.random(100, 5000)
    total = total + quantity * price
    lines[i] = string.format(
      '{"sku":"SKU-%d","quantity":%d,"unit_price_minor":%d,"category":"grocery"}',
      math.random(1, 500), quantity, price)
  end
  return string.format(
    '{"type":"purchase","id":"%s-%d-%d-%d","member":{"external_id":"M%d"},'
      .. '"occurred_at":"2026-11-01T10:00:00Z","currency":"EUR","total_minor":%d,"lines":[%s]}',
    run, thread_no, sent, n, math.random(1, members), total, table.concat(lines, ","))
end

function request()
  sent = sent + 1
  if fixed_body then
    return wrk.format("POST", nil, headers, fixed_body)
  end
  if batch == 0 then
    return wrk.format("POST", nil, headers, purchase(0))
  end
  local events = {}
  for n = 1, batch do
    events[n] = purchase(n)
  end
  return wrk.format("POST", nil, headers, '{"events":[' .. table.concat(events, ",") .. ']}')
end

function response(status, headers, body)
  if status ~= expected then
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
