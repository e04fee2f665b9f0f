"""worker.py as a push endpoint: streamcar (`--subscriptions`) POSTs each
prompt here and the answer settles it: 200 acks, 503 + Retry-After and 409
retry later. No fetch loop, receipts or lease renewal: the sidecar does those.

    python push_worker.py --port 8080 [--name w1]
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from streamcar_client import Tenant
from worker import fake_model


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the sidecar reuses its connections

    def do_POST(self):
        prompt = json.loads(self.rfile.read(int(self.headers["content-length"])))
        msg_id, tenant = self.headers["ce-id"], Tenant(self.headers["ce-source"].split("/")[3])
        status, slot = tenant.call("POST", "/pools/gpu/acquire", {"holder": NAME, "wait_ms": 2000})
        if status != 201:
            return self.answer(503, {"retry-after": "1"})  # pool full: again in a second
        try:
            status, claim = tenant.call("POST", f"/idempotency/{msg_id}/claim", {"ttl_ms": 4000, "owner": NAME})
            if status == 409:  # someone else is running it: look again later
                return self.answer(409)
            result = claim.get("result") if status == 200 else fake_model(prompt["prompt"])
            if status == 201:
                tenant.call("POST", f"/idempotency/{msg_id}/complete", {"token": claim["token"], "result": result, "ttl_ms": 3600000})
            causation = {"causation_id": msg_id, "idempotency_key": f"result-{msg_id}"}
            correlation = self.headers["streamcar-correlation-id"] or msg_id
            tenant.call_retrying("POST", "/topics/results/messages", {"payload": {"prompt_id": msg_id, **result, "worker": NAME}, "correlation_id": correlation, **causation})
            self.answer(200)  # only now is the prompt done: the sidecar acks it
        finally:
            tenant.call("POST", "/pools/gpu/release", {"reservation_id": slot["reservation_id"]})

    def answer(self, status, headers=None):
        self.send_response(status)
        for name, value in {"content-length": "0", **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, *args):  # quiet: one line per prompt is noise
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default="push-worker")
    args = parser.parse_args()
    NAME = args.name
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
