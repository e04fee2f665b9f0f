"""The last step: takes each join's aggregate from `answers` and acks it
with `emit` to the user's realtime channel `user-<user>`, where the user's
browser (SSE or WebSocket, through the sidecar or the JWT edge) gets it, and
can replay what it missed while offline. The emit's idempotency key makes
the notification exactly-once even when this worker dies mid-step.

    python notifier.py --tenants acme,globex [--name n1]
"""

from streamcar_client import consume, step_args, traceparent_of


def handle(tenant, message):
    aggregate, trace = message["payload"], traceparent_of(message)
    user = message["key"]
    final = {
        "prompt_id": message["correlation_id"],
        "status": aggregate["status"],
        "answers": aggregate["results"],
        "missing": aggregate["missing"],
    }
    tenant.call_retrying(
        "POST",
        "/topics/answers/groups/notify/ack",
        {"receipts": [message["receipt"]], "emit": [{"channel": f"user-{user}", "payload": final}]},
        traceparent=trace,
    )


def main():
    args = step_args("notifier")
    consume(args.tenants, "answers", "notify", args.name, handle)


if __name__ == "__main__":
    main()
