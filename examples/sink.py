"""Second stage: consumes `results` and appends one JSON line per result to
a file (or stdout), then acks.

    python sink.py --tenants acme,globex [--out results.jsonl] [--max-idle-polls N]
"""

import argparse
import json
import sys

from streamcar_client import Tenant, wait_ready


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", default="acme")
    parser.add_argument("--out", default="-")
    parser.add_argument("--max-idle-polls", type=int, default=0, help="exit after N empty polls in a row (0 = never)")
    args = parser.parse_args()
    wait_ready()
    tenants = [Tenant(n) for n in args.tenants.split(",")]
    out = sys.stdout if args.out == "-" else open(args.out, "a", encoding="utf-8")
    idle = 0
    while args.max_idle_polls == 0 or idle < args.max_idle_polls:
        got_any = False
        for tenant in tenants:
            status, reply = tenant.call(
                "POST", "/topics/results/groups/sink/fetch", {"consumer": "sink", "max": 50, "wait_ms": 200}
            )
            if status != 200 or not reply["messages"]:
                continue
            got_any = True
            for message in reply["messages"]:
                line = {"tenant": tenant.name, "causation_id": message["causation_id"], **message["payload"]}
                out.write(json.dumps(line) + "\n")
            out.flush()
            receipts = [m["receipt"] for m in reply["messages"]]
            tenant.call("POST", "/topics/results/groups/sink/ack", {"receipts": receipts})
        idle = 0 if got_any else idle + 1


if __name__ == "__main__":
    main()
