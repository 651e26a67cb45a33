-- wrk script for bench/ingest.py: POST a valid SPEC §3.1 incoming event.
--
-- Environment:
--   BENCH_AUTH     bearer key ("" = no Authorization header, for the baseline)
--   BENCH_OWNER    the tenant id put in "owner"
--   BENCH_TICKETS  ticket numbers per wrk thread; requests cycle over them, so concurrent
--                  requests rarely wait on the same ticket's row lock
--   BENCH_RUN      a prefix that keeps ticket numbers of different runs apart
--
-- done() prints one line "WRK_JSON {...}": request count, duration, socket errors,
-- non-2xx answers (counted in response()) and latency percentiles in microseconds.

local auth = os.getenv("BENCH_AUTH") or ""
local owner = os.getenv("BENCH_OWNER") or "bench"
local tickets = tonumber(os.getenv("BENCH_TICKETS") or "500")
local run = os.getenv("BENCH_RUN") or "run"

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  sent = 0
  non2xx = 0
  last_bad = 0
  tid = id
  wrk.headers["Content-Type"] = "application/json"
  if auth ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. auth
  end
end

function request()
  local ticket = string.format("%s-%d-%d", run, tid, sent % tickets)
  sent = sent + 1
  local body = string.format(
    '{"ticketNumber":"%s","channel":"whatsapp","accountId":"628128778222",' ..
    '"contactId":"c-%s","messageType":"text","message":"Halo %d","mediaLink":"",' ..
    '"customerName":"Farhan Akbar","createdDate":"2021-04-28T15:39:37.945",' ..
    '"owner":"%s","groupId":"","language":""}',
    ticket, ticket, sent, owner)
  return wrk.format("POST", nil, nil, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    last_bad = status
  end
end

function done(summary, latency, requests)
  local bad, bad_status = 0, 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non2xx") or 0)
    local status = thread:get("last_bad") or 0
    if status ~= 0 then bad_status = status end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"non2xx":%d,"last_non2xx_status":%d,' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    bad, bad_status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
