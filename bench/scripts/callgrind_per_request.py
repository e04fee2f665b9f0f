"""Instructions the sidecar process executes per request, counted by callgrind.

Starts a private redis-server and `streamcar serve` under
`valgrind --tool=callgrind`, warms each scenario up, then for each one zeroes
the counters, sends N requests one at a time on a keep-alive connection, dumps
the counters and divides the process's total instructions (every thread) by
N. Deterministic enough to compare builds (a few tenths of a percent between
runs), unlike wall-clock figures on a shared machine.

Usage (release binary; `cargo build --profile profiling` for one with line
tables that callgrind_annotate can point into):
    python3 bench/scripts/callgrind_per_request.py TARGET/release/streamcar [--flags "--worker-threads 2"] [--keep]

With --keep the dumps stay (their directory is printed) for
`callgrind_annotate <dir>/callgrind.out.N` (1 publish, 2 publish_batch,
3 fetch_ack, 4 fetch1_ack, 5 publish_concurrent); otherwise the directory
is removed.

Scenarios (requests sent one at a time, so no group commit):
  publish        one message with an idempotency key, as the bench's `publish`
  publish_batch  100 such messages per request, as the bench's `publish_batch`
  fetch_ack      fetch max 100 (wait 0) of a backlog, then ack them: one unit
                 is the pair of requests, reported per pair and per message
  fetch1_ack     fetch max 1 with the previous receipt in `ack` (one request
                 per message), as the bench's `consume_single`
  publish_concurrent
                 `publish` from 16 connections at once, so that group commit
                 combines them as in the bench (the count varies a little
                 with how many each call combines)
"""
import http.client, json, os, shlex, shutil, socket, subprocess, sys, tempfile, threading, time

binary = sys.argv[1]
flags = []
if "--flags" in sys.argv:
    flags = shlex.split(sys.argv[sys.argv.index("--flags") + 1])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


work = tempfile.mkdtemp(prefix="streamcar-callgrind-")
rport, hport = free_port(), free_port()
redis = subprocess.Popen(
    ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
     "--appendonly", "no", "--dir", work, "--loglevel", "warning"],
    stdout=subprocess.DEVNULL)
out = os.path.join(work, "callgrind.out")
sidecar = subprocess.Popen(
    ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
     binary, "serve", "--redis-url", f"redis://127.0.0.1:{rport}",
     "--listen", f"127.0.0.1:{hport}", *flags],
    env={**os.environ, "RUST_LOG": "warn"},
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

conn = None


def connect():
    global conn
    for _ in range(600):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", hport, timeout=60)
            conn.request("GET", "/readyz")
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("sidecar did not become ready")


def call(method, path, body=None):
    conn.request(method, "/v1/tenants/bench" + path,
                 body=json.dumps(body) if body is not None else None,
                 headers={"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, (json.loads(data) if data else None)


def control(option):
    """Runs callgrind_control while poking the sidecar with /healthz: valgrind
    reads commands only while the process runs code, and an idle runtime
    sleeps in epoll_wait."""
    done = threading.Event()
    def poke():
        c = http.client.HTTPConnection("127.0.0.1", hport, timeout=60)
        while not done.is_set():
            c.request("GET", "/healthz")
            c.getresponse().read()
            time.sleep(0.05)
    t = threading.Thread(target=poke)
    t.start()
    subprocess.run(["callgrind_control", option, str(sidecar.pid)],
                   stdout=subprocess.DEVNULL, check=True)
    done.set()
    t.join()


n = 0
def message():
    global n
    n += 1
    return {"payload": {"prompt": "Summarize the following support ticket in one line.", "n": n},
            "idempotency_key": f"cg-{n}", "correlation_id": "bench-run", "key": f"user-{n % 1000}"}


def measured(name, requests, per, unit_count=1):
    """Zeroes the counters, runs `requests()` (which sends `per` units), dumps
    and returns instructions per unit."""
    control("--zero")
    requests()
    before = set(f for f in os.listdir(work) if f.startswith("callgrind.out"))
    control(f"--dump={name}")
    dumps = sorted(set(f for f in os.listdir(work) if f.startswith("callgrind.out")) - before)
    total = None
    for line in open(os.path.join(work, dumps[-1])):
        if line.startswith("summary:") or line.startswith("totals:"):
            total = int(line.split()[1])
    return total / per


def publish_n(k):
    def run():
        for _ in range(k):
            s, _ = call("POST", "/topics/cg-publish/messages", message())
            assert s == 201, s
    return run


def batch_n(k):
    def run():
        for _ in range(k):
            s, _ = call("POST", "/topics/cg-batch/messages:batch",
                        {"messages": [message() for _ in range(100)]})
            assert s == 200, s
    return run


def fill(topic, count):
    for _ in range(count // 1000):
        s, _ = call("POST", f"/topics/{topic}/messages:batch",
                    {"messages": [message() for _ in range(1000)]})
        assert s == 200, s


delivered = [0]
def fetch_ack_n(k):
    def run():
        for _ in range(k):
            s, b = call("POST", "/topics/cg-consume/groups/workers/fetch",
                        {"consumer": "c", "max": 100})
            assert s == 200 and len(b["messages"]) == 100, (s, len(b["messages"]))
            delivered[0] += len(b["messages"])
            s, _ = call("POST", "/topics/cg-consume/groups/workers/ack",
                        {"receipts": [m["receipt"] for m in b["messages"]]})
            assert s == 200, s
    return run


def publish_concurrent(connections, k):
    """`k` publishes on each of `connections` keep-alive connections at once."""
    def worker():
        c = http.client.HTTPConnection("127.0.0.1", hport, timeout=60)
        for _ in range(k):
            c.request("POST", "/v1/tenants/bench/topics/cg-concurrent/messages",
                      body=json.dumps(message()), headers={"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            assert r.status == 201, r.status
        c.close()
    def run():
        threads = [threading.Thread(target=worker) for _ in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return run


previous = []
def fetch1_n(k):
    def run():
        global previous
        for _ in range(k):
            s, b = call("POST", "/topics/cg-single/groups/workers/fetch",
                        {"consumer": "c", "max": 1, "ack": previous})
            assert s == 200 and len(b["messages"]) == 1, s
            previous = [m["receipt"] for m in b["messages"]]
    return run


try:
    connect()
    results = {}
    publish_n(200)()
    results["publish"] = measured("publish", publish_n(1000), 1000)
    batch_n(10)()
    results["publish_batch"] = measured("publish_batch", batch_n(100), 100)
    call("PUT", "/topics/cg-consume/groups/workers", {"lease_ms": 600000, "start": "earliest"})
    fill("cg-consume", 12000)
    fetch_ack_n(10)()
    results["fetch_ack"] = measured("fetch_ack", fetch_ack_n(100), 100)
    call("PUT", "/topics/cg-single/groups/workers", {"lease_ms": 600000, "start": "earliest"})
    fill("cg-single", 2000)
    fetch1_n(100)()
    results["fetch1_ack"] = measured("fetch1_ack", fetch1_n(1000), 1000)
    publish_concurrent(16, 10)()
    results["publish_concurrent"] = measured(
        "publish_concurrent", publish_concurrent(16, 100), 1600)
    print(json.dumps({k: round(v) for k, v in results.items()}))
finally:
    sidecar.terminate()
    sidecar.wait()
    redis.terminate()
    redis.wait()
    if "--keep" in sys.argv:
        print(f"dumps in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
