-- POST one body file with wrk and print exact latency percentiles as one JSON line.
--
--   wrk -t1 -c64 -d8s --timeout 5s -s loadtests/wrk/post.lua URL -- BODY_FILE ["Header: value" ...]
--
-- The body is read once in init(); wrk.init() then formats a single static request,
-- so no Lua runs per request. done() prints a line starting with "WRKJSON " that
-- loadtests/compare.py parses; latencies are in microseconds, straight from wrk's
-- histogram (exact at 1 us resolution).

function init(args)
  local path = args[1]
  if path == nil then
    error("usage: -s post.lua URL -- BODY_FILE [\"Header: value\" ...]")
  end
  local f = assert(io.open(path, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  for i = 2, #args do
    local name, value = string.match(args[i], "^([^:]+):%s*(.*)$")
    if name ~= nil then
      wrk.headers[name] = value
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.2f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
