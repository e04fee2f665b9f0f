"""Empty-fetch cost with many live leases vs none.

Finding expired leases is a range read on the group's lease set, so an empty
fetch should cost about the same with 60,000 live leases as with none (a
scan of the pending list would grow with them).

Usage: start `streamcar serve` (release build) against a private Redis, then
    python3 bench/scripts/empty_fetch_with_live_leases.py http://127.0.0.1:PORT [LEASES]
Declares two groups on one topic, hands LEASES messages to a holder in
group 'busy' (60 s leases), leaves group 'idle' with nothing, then times
empty fetches by another consumer on each group, alternating rounds.
"""
import http.client, json, sys, time, urllib.parse

base = urllib.parse.urlparse(sys.argv[1])
leases = int(sys.argv[2]) if len(sys.argv) > 2 else 60000
conn = http.client.HTTPConnection(base.hostname, base.port)
T = "/v1/tenants/bench/topics/leases"

def call(method, path, body=None):
    conn.request(method, T + path, body=json.dumps(body) if body is not None else None,
                 headers={"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, (json.loads(data) if data else None)

call("DELETE", "")
call("PUT", "/groups/busy", {"lease_ms": 600000, "start": "earliest"})
for i in range(0, leases, 1000):
    s, _ = call("POST", "/messages:batch", {"messages": [{"payload": j} for j in range(1000)]})
    assert s == 200, s
got = 0
while got < leases:
    s, b = call("POST", "/groups/busy/fetch", {"consumer": "holder", "max": 1000})
    got += len(b["messages"])
call("PUT", "/groups/idle", {"lease_ms": 600000, "start": "latest"})
def timed(group, n=2000):
    t = time.perf_counter()
    for _ in range(n):
        s, b = call("POST", f"/groups/{group}/fetch", {"consumer": "probe", "max": 10})
        assert s == 200 and not b["messages"], b
    return (time.perf_counter() - t) / n * 1e6
busy, idle = [], []
for _ in range(3):
    busy.append(timed("busy")); idle.append(timed("idle"))
print(json.dumps({"live_leases": leases, "empty_fetch_us_with_leases": round(min(busy), 1),
                  "empty_fetch_us_without": round(min(idle), 1),
                  "ratio": round(min(busy) / min(idle), 2)}))
