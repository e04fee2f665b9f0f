"""One fanned-out model: takes its tasks from topic `model-a` (or `model-b`)
and posts its answer as its part of the prompt's join, then acks. The part
that completes the join makes the sidecar publish the aggregate to `answers`
in the same step. A redo posts the same part again: a no-op.

    python fanout_model.py --model model-a --tenants acme,globex [--name a1]
"""

import argparse

from pipeline import fake_model
from streamcar_client import consume, step_args, traceparent_of


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["model-a", "model-b"], required=True)
    args = step_args("fanout", parser)
    model = args.model

    def handle(tenant, message):
        task, trace = message["payload"], traceparent_of(message)
        answer = fake_model(model, task["text"])
        status, reply = tenant.call_retrying(
            "POST", f"/topics/answers/joins/{task['join']}/parts/{model}", {"result": answer}, traceparent=trace
        )
        # 200: recorded (or the same answer again); 409 join_finished: the join
        # timed out before this part came, so its aggregate is already out.
        if status not in (200, 409):
            print(f"{model}: part of {task['join']}: {status} {reply}", flush=True)
            tenant.call("POST", f"/topics/{model}/groups/{model}/nack", {"receipts": [message["receipt"]]})
            return
        tenant.call_retrying("POST", f"/topics/{model}/groups/{model}/ack", {"receipts": [message["receipt"]]}, traceparent=trace)

    consume(args.tenants, model, model, args.name, handle)


if __name__ == "__main__":
    main()
