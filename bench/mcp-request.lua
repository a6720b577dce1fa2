-- wrk script: one MCP 2026-07-28 style stateless request per request, `tools/call` of `echo` or
-- `tools/list` (BENCH_METHOD, default tools/call).
--
-- No session, no initialize: the protocol version, client info and capabilities travel in the
-- request's `params._meta`, and the method and tool name in the Mcp-Method / Mcp-Name headers
-- (which must agree with the body). Whether the answer is JSON or SSE is the server's choice
-- (rmcp's `--stateless-json` or `--stateless-sse`); wrk reads either to its end.
--
-- At the end, prints one line `WRK_RESULT {json}` that bench/run.sh reads.

local meta = '"_meta":{'
  .. '"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
  .. '"io.modelcontextprotocol/clientInfo":{"name":"mcp-guard-bench","version":"0.1.0"},'
  .. '"io.modelcontextprotocol/clientCapabilities":{}}'
local method = os.getenv("BENCH_METHOD")
if method == nil or method == "" then
  method = "tools/call"
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
wrk.headers["Mcp-Method"] = method
local function call_body(text)
  return '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
    .. '"arguments":{"text":"' .. text .. '"},' .. meta .. '}}'
end
if method == "tools/call" then
  wrk.body = call_body("hello from wrk")
  wrk.headers["Mcp-Name"] = "echo"
elseif method == "tools/list" then
  wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{' .. meta .. '}}'
else
  error("BENCH_METHOD must be tools/call or tools/list, not " .. method)
end
-- BENCH_DISTINCT=1: every call's text is its own (`hello from wrk <thread>-<n>`), so no two calls
-- are alike and a governed sidecar evaluates each one's decision.
local distinct = os.getenv("BENCH_DISTINCT") == "1" and method == "tools/call"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end
-- Defined only then: without it, wrk sends its one prepared request, as for the other scenarios.
if distinct then
  local sent = 0
  function request()
    sent = sent + 1
    return wrk.format(nil, nil, nil, call_body("hello from wrk " .. tostring(thread_id) .. "-" .. sent))
  end
end
-- bench/run.sh sets BENCH_AUTHORIZATION for a target that verifies a bearer token.
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization ~= nil and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_s":%.3f,"rps":%.1f,'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f},'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
