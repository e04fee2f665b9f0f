"""A tiny streamcar client on the Python standard library (urllib + json).

Every call returns (status, body). Problem documents (RFC 9457) come back as
the body of a non-2xx status, so callers branch on `status` and `body["code"]`.
A call made for a message passes the message's `traceparent` on, so the
sidecar's spans for it (acks, emits, join parts) stay in the message's trace.
"""

import argparse
import json
import os
import time
import urllib.error
import urllib.request

BASE = os.environ.get("STREAMCAR_URL", "http://127.0.0.1:7400")


class Tenant:
    """Calls under /v1/tenants/<name>."""

    def __init__(self, name, base=BASE, token=None):
        self.prefix = f"{base}/v1/tenants/{name}"
        self.name = name
        self.token = token

    def call(self, method, path, body=None, timeout=40, traceparent=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.prefix + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        if self.token:
            request.add_header("authorization", f"Bearer {self.token}")
        if traceparent:
            request.add_header("traceparent", traceparent)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as error:
            raw = error.read()
            return error.code, (json.loads(raw) if raw else None)

    def call_retrying(self, method, path, body=None, attempts=60, traceparent=None):
        """Retries 429 and 503 (transient: quota, backlog, Redis away) after a
        pause, a bounded number of times."""
        for _ in range(attempts):
            status, reply = self.call(method, path, body, traceparent=traceparent)
            if status not in (429, 503):
                return status, reply
            time.sleep(0.25)
        return status, reply


def wait_ready(base=BASE, seconds=60):
    """Blocks until /readyz answers 200 (bounded)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"streamcar at {base} is not ready")


def traceparent_of(message):
    """The delivery's trace context (None when tracing is off)."""
    return (message.get("headers") or {}).get("traceparent")


def consume(tenants, topic, group, name, handle, max_idle_polls=0, batch=4):
    """The pull loop of a stage: fetch from `group` for each tenant in turn
    (round-robin, so one busy tenant cannot starve the others) and hand each
    message to `handle(tenant, message)`, which settles it (ack, ack with
    emit, nack). Stops after `max_idle_polls` empty rounds (0 = never)."""
    wait_ready()
    idle = 0
    while max_idle_polls == 0 or idle < max_idle_polls:
        got_any = False
        for tenant in tenants:
            status, reply = tenant.call(
                "POST",
                f"/topics/{topic}/groups/{group}/fetch",
                {"consumer": name, "max": batch, "wait_ms": 200},
            )
            if status != 200:  # Redis away, group being re-declared: later
                time.sleep(0.2)
                continue
            for message in reply["messages"]:
                got_any = True
                handle(tenant, message)
        idle = 0 if got_any else idle + 1


def step_args(role, parser=None):
    """The command line every pull step shares: `--tenants a,b` (as Tenant
    objects) and `--name` (the consumer name, `<role>-<pid>` by default)."""
    parser = parser or argparse.ArgumentParser()
    parser.add_argument("--tenants", default="acme")
    parser.add_argument("--name", default=f"{role}-{os.getpid()}")
    args = parser.parse_args()
    args.tenants = [Tenant(n) for n in args.tenants.split(",")]
    return args
