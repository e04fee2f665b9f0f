"""Publishes prompts: for each tenant, `--users` users send `--count` prompts
each, keyed by user (the pipeline keeps each user's prompts in order). Each
prompt has a fixed id and idempotency key, so running the producer twice (a
retry after a crash, a redeploy) publishes nothing twice.

    python producer.py --tenants acme,globex --users 3 --count 10
"""

import argparse

from pipeline import declare
from streamcar_client import Tenant, wait_ready


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", default="acme")
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--count", type=int, default=10, help="prompts per user")
    args = parser.parse_args()
    wait_ready()
    for name in args.tenants.split(","):
        tenant = Tenant(name)
        declare(tenant)
        for n in range(args.count):
            for u in range(args.users):
                user = f"u{u}"
                prompt_id = f"{name}-{user}-{n}"
                status, reply = tenant.call_retrying(
                    "POST",
                    "/topics/prompts/messages",
                    {
                        "id": prompt_id,
                        "key": user,
                        "payload": {"user": user, "n": n, "prompt": f"Write a haiku about ticket {n}"},
                        "idempotency_key": prompt_id,
                    },
                )
                if status not in (200, 201):
                    raise SystemExit(f"publish failed: {status} {reply}")
        print(f"{name}: published {args.count} prompts for each of {args.users} users", flush=True)


if __name__ == "__main__":
    main()
