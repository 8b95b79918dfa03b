-- wrk script for the ping benchmark: counts answers that are not 200 and reports one JSON line.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non_200 = 0
end

-- With BENCH_WRK_PATHS (space-separated paths), each connection's requests go through them in turn; without
-- it, no request function: wrk sends its one request, unchanged, as fast as it can.
local paths = os.getenv("BENCH_WRK_PATHS")
if paths then
  local requests = {}
  for path in paths:gmatch("%S+") do
    table.insert(requests, wrk.format("GET", path))
  end
  local next_request = 0
  function request()
    next_request = next_request % #requests + 1
    return requests[next_request]
  end
end

function response(status, headers, body)
  if status ~= 200 then
    non_200 = non_200 + 1
  end
end

function done(summary, latency, requests)
  local non_200_total = 0
  for _, thread in ipairs(threads) do
    non_200_total = non_200_total + thread:get("non_200")
  end
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non_200": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), non_200_total,
    errors.connect + errors.read + errors.write + errors.timeout))
end
