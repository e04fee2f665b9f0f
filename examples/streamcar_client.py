"""A tiny streamcar client on the Python standard library (urllib + json).

Every call returns (status, body). Problem documents (RFC 9457) come back as
the body of a non-2xx status, so callers branch on `status` and `body["code"]`.
"""

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

    def call(self, method, path, body=None, timeout=40):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.prefix + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        if self.token:
            request.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as error:
            raw = error.read()
            return error.code, (json.loads(raw) if raw else None)

    def call_retrying(self, method, path, body=None, attempts=60):
        """Retries 429 and 503 after Retry-After-ish pauses (bounded)."""
        for _ in range(attempts):
            status, reply = self.call(method, path, body)
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
