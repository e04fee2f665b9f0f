"""The example AI pipeline's topology, in one place:

    prompts ──push──▶ model_handler.py ──emit──▶ drafts
    drafts ──pull──▶ postprocess.py: declares the join, then emits to both models
    model-a, model-b ──pull──▶ fanout_model.py: posts its part to the join
    join complete ──▶ answers ──pull──▶ notifier.py ──emit──▶ channel user-<user>

Every group is ordered by key (the user), so each user's prompts move
through every step in order, and the user's channel gets the final results
in the order the prompts were sent. Each step acks with `emit`: the next
step's message and the ack are one exactly-once effect.
"""

import hashlib
import random
import time

# Every group of the pipeline: one message per user in progress, short leases
# (a killed worker's message comes back in 2 s), quick retries, and enough
# deliveries that killed workers never dead-letter a prompt.
GROUP = {
    "start": "earliest",
    "ordering": "key",
    "lease_ms": 2000,
    "max_deliveries": 50,
    "backoff": {"initial_ms": 100, "max_ms": 1000, "multiplier": 2.0, "jitter": 0.2},
}

# (topic, group) of each pulled step; prompts/model is declared by the push
# subscription (subscriptions.yaml) with the same GROUP config.
PULLED = [("drafts", "post"), ("model-a", "model-a"), ("model-b", "model-b"), ("answers", "notify")]

# The fan-out: one part per model; the join's aggregate goes to `answers`.
MODELS = ["model-a", "model-b"]
JOIN_TTL_MS = 120_000


def declare(tenant):
    """Declares the pools and groups (idempotent: the same config again
    changes nothing), so no step misses what was published before it ran."""
    tenant.call_retrying("PUT", "/pools/gpu", {"capacity": 2, "lease_ms": 10000})
    tenant.call_retrying("PUT", "/topics/prompts/groups/model", GROUP)
    for topic, group in PULLED:
        tenant.call_retrying("PUT", f"/topics/{topic}/groups/{group}", GROUP)


def fake_model(model, text):
    """Stands in for an LLM call: slow-ish, and deterministic, so a step
    redone after a crash produces the very same output."""
    time.sleep(random.uniform(0.005, 0.02))
    digest = hashlib.sha256(f"{model}:{text}".encode()).hexdigest()[:12]
    return f"{model}-{digest}"


def join_name(prompt_id):
    return f"answer.{prompt_id}"
