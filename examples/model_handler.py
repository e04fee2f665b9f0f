"""The model step, as a push endpoint: streamcar (`--subscriptions`, see
subscriptions.yaml) POSTs each prompt here, and the answer settles it. No
fetch loop, receipts or lease renewal: the sidecar does those.

For each prompt: reserve a slot in the `gpu` pool (bounded concurrency
across every handler), claim the model call by message id (a redo after a
crash replays the stored result instead of paying for the call again), run
it, and answer 200 with `{"emit": [...]}`: the sidecar publishes the draft to
`drafts` and acks the prompt as one exactly-once effect. 503 + Retry-After
(pool full) and 409 (another handler is running it) make the sidecar retry
later.

    python model_handler.py --port 8080 [--name h1]
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipeline import fake_model
from streamcar_client import Tenant


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the sidecar reuses its connections

    def do_POST(self):
        prompt = json.loads(self.rfile.read(int(self.headers["content-length"])))
        msg_id = self.headers["ce-id"]
        tenant = Tenant(self.headers["ce-source"].split("/")[3])
        status, slot = tenant.call("POST", "/pools/gpu/acquire", {"holder": f"{NAME}.{msg_id}", "wait_ms": 2000})
        if status != 201:
            return self.answer(503, headers={"retry-after": "1"})  # pool full: again in a second
        try:
            claim_path = f"/idempotency/model.{msg_id}"
            status, claim = tenant.call("POST", f"{claim_path}/claim", {"ttl_ms": 5000, "owner": NAME})
            if status == 409:  # another handler is running it: look again later
                return self.answer(409)
            if status == 200:  # completed before (by a handler that then died): reuse it
                draft = claim["result"]
            else:
                draft = fake_model("draft", prompt["prompt"])
                tenant.call("POST", f"{claim_path}/complete", {"token": claim["token"], "result": draft, "ttl_ms": 3600000})
        finally:
            tenant.call("POST", "/pools/gpu/release", {"reservation_id": slot["reservation_id"]})
        # The sidecar publishes this to `drafts` (key: the user, causation: the
        # prompt) and acks the prompt; a redo emits nothing new.
        emit = {"topic": "drafts", "key": prompt["user"], "payload": {**prompt, "draft": draft}}
        self.answer(200, {"emit": [emit]})

    def answer(self, status, body=None, headers=None):
        raw = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        headers = {"content-length": str(len(raw)), "content-type": "application/json", **(headers or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):  # quiet: one line per prompt is noise
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default="model-handler")
    args = parser.parse_args()
    NAME = args.name
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
