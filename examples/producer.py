"""Publishes prompts for each tenant, each with an idempotency key, so running
the producer twice (a retry after a crash, a redeploy) publishes nothing twice.

    python producer.py --tenants acme,globex --count 50
"""

import argparse

from streamcar_client import Tenant, wait_ready


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", default="acme")
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    wait_ready()
    for name in args.tenants.split(","):
        tenant = Tenant(name)
        # Declare the pipeline once: the consumer groups start at the
        # beginning, so nothing published before a worker starts is missed.
        tenant.call("PUT", "/topics/prompts/groups/llm", {"lease_ms": 3000, "max_deliveries": 10})
        tenant.call("PUT", "/topics/results/groups/sink", {"lease_ms": 5000})
        tenant.call("PUT", "/pools/gpu", {"capacity": 2, "lease_ms": 5000})
        for i in range(args.count):
            prompt_id = f"{name}-prompt-{i}"
            status, reply = tenant.call_retrying(
                "POST",
                "/topics/prompts/messages",
                {
                    "id": prompt_id,
                    "payload": {"prompt": f"Write a haiku about ticket {i}", "user": f"user-{i % 7}"},
                    "key": f"user-{i % 7}",
                    "idempotency_key": prompt_id,
                    "correlation_id": prompt_id,
                },
            )
            if status not in (200, 201):
                raise SystemExit(f"publish failed: {status} {reply}")
        print(f"{name}: published {args.count} prompts", flush=True)


if __name__ == "__main__":
    main()
