"""The model-call worker: fetch a prompt, reserve a GPU slot, claim the work
by message id, run a (fake) model call, store the result, publish it to the
`results` topic, ack, release the slot.

Safe to kill at any moment: the message comes back after its lease, and the
idempotency claim plus the result's idempotency key make the retry publish
nothing twice.

    python worker.py --tenants acme,globex [--max-idle-polls N] [--name w1]
"""

import argparse
import hashlib
import os
import random
import time

from streamcar_client import Tenant, wait_ready


def fake_model(prompt):
    """Stands in for an LLM call: slow-ish, deterministic output."""
    time.sleep(random.uniform(0.01, 0.05))
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    return {"completion": f"haiku-{digest}", "tokens": len(prompt.split())}


def handle(tenant, message, name):
    receipt = message["receipt"]
    msg_id = message["id"]
    # 1. A compute slot (bounded wait); if the pool stays full, retry later.
    status, slot = tenant.call("POST", "/pools/gpu/acquire", {"holder": name, "wait_ms": 2000})
    if status != 201:
        tenant.call("POST", "/topics/prompts/groups/llm/nack", {"receipts": [receipt], "delay_ms": 200})
        return
    try:
        # 2. Claim the work by message id.
        status, claim = tenant.call("POST", f"/idempotency/{msg_id}/claim", {"ttl_ms": 4000, "owner": name})
        if status == 409:  # someone else is running it: look again later
            tenant.call("POST", "/topics/prompts/groups/llm/nack", {"receipts": [receipt], "delay_ms": 500})
            return
        if status == 201:
            result = fake_model(message["payload"]["prompt"])
            tenant.call(
                "POST",
                f"/idempotency/{msg_id}/complete",
                {"token": claim["token"], "result": result, "ttl_ms": 3600000},
            )
        else:  # 200: completed before (by us or a worker that died): reuse it
            result = claim["result"]
        # 3. Publish downstream; the idempotency key makes a retry a no-op.
        tenant.call_retrying(
            "POST",
            "/topics/results/messages",
            {
                "payload": {"prompt_id": msg_id, **result, "worker": name},
                "causation_id": msg_id,
                "correlation_id": message.get("correlation_id") or msg_id,
                "idempotency_key": f"result-{msg_id}",
            },
        )
        # 4. Only now is the prompt done.
        tenant.call("POST", "/topics/prompts/groups/llm/ack", {"receipts": [receipt]})
    finally:
        tenant.call("POST", "/pools/gpu/release", {"reservation_id": slot["reservation_id"]})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", default="acme")
    parser.add_argument("--name", default=f"worker-{os.getpid()}")
    parser.add_argument("--max-idle-polls", type=int, default=0, help="exit after N empty polls in a row (0 = never)")
    args = parser.parse_args()
    wait_ready()
    tenants = [Tenant(n) for n in args.tenants.split(",")]
    idle = 0
    while args.max_idle_polls == 0 or idle < args.max_idle_polls:
        got_any = False
        for tenant in tenants:  # round-robin: one busy tenant cannot starve the others
            status, reply = tenant.call(
                "POST", "/topics/prompts/groups/llm/fetch", {"consumer": args.name, "max": 5, "wait_ms": 200}
            )
            if status != 200:
                time.sleep(0.2)
                continue
            for message in reply["messages"]:
                got_any = True
                handle(tenant, message, args.name)
        idle = 0 if got_any else idle + 1
    print(f"{args.name}: idle, exiting", flush=True)


if __name__ == "__main__":
    main()
