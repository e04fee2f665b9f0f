"""The post-process step: takes each draft, cleans it up, declares the
fan-in join that will collect both models' answers, then acks the draft
with `emit` to `model-a` and `model-b` (the fan-out). A worker killed
anywhere in between redoes the step: the join declaration is idempotent and
the emits carry deterministic idempotency keys, so nothing happens twice.

    python postprocess.py --tenants acme,globex [--name p1]
"""

from pipeline import JOIN_TTL_MS, MODELS, join_name
from streamcar_client import consume, step_args, traceparent_of


def handle(tenant, message):
    draft = message["payload"]
    prompt_id = message["correlation_id"]  # the prompt's id, inherited by every step
    user, trace = draft["user"], traceparent_of(message)
    text = " ".join(draft["draft"].split()).capitalize()
    join = join_name(prompt_id)
    status, reply = tenant.call_retrying(
        "PUT",
        f"/topics/answers/joins/{join}",
        {"parts": MODELS, "ttl_ms": JOIN_TTL_MS, "key": user, "correlation_id": prompt_id},
        traceparent=trace,
    )
    if status not in (200, 201):
        raise SystemExit(f"join {join}: {status} {reply}")
    task = {"join": join, "user": user, "n": draft["n"], "text": text}
    emit = [{"topic": model, "key": user, "payload": task} for model in MODELS]
    # 409 lease_lost: the lease ran out and the draft went to another worker,
    # which redoes the step; nothing was emitted by this call.
    tenant.call_retrying(
        "POST", "/topics/drafts/groups/post/ack", {"receipts": [message["receipt"]], "emit": emit}, traceparent=trace
    )


def main():
    args = step_args("post")
    consume(args.tenants, "drafts", "post", args.name, handle)


if __name__ == "__main__":
    main()
