"""A notification gateway on a streamcar realtime channel (standard library only).

It follows one channel's Server-Sent Events and hands each message to
`deliver` (here: print it), the way a per-user push gateway or a backend
that relays notifications to devices would. It keeps its position
(`<epoch>:<offset>`, the event id) in a file, so a restart, a dropped
connection, a `slow_consumer` cut or a Redis restart resumes exactly where
it stopped: missed messages are replayed from the channel's history, and
when history no longer reaches back (an `event: reset`) it says so and
carries on live, never skipping silently.

    python3 examples/gateway/gateway.py acme user-42
    curl -s localhost:7400/v1/tenants/acme/channels/user-42/messages \
        --json '{"payload": {"title": "hello"}}'
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

BASE = os.environ.get("STREAMCAR_URL", "http://127.0.0.1:7400")


def deliver(channel, message):
    """Where a real gateway would push to a device or a socket."""
    print(f"{channel} #{message['offset']}: {json.dumps(message['payload'])}", flush=True)


def events(url, last_event_id):
    """Yields (id, event, data) from one SSE connection until it ends."""
    request = urllib.request.Request(url, headers={"accept": "text/event-stream"})
    if last_event_id:
        request.add_header("last-event-id", last_event_id)
    with urllib.request.urlopen(request, timeout=60) as response:
        event_id, event, data = None, "message", []
        for raw in response:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    yield event_id, event, json.loads("\n".join(data))
                event_id, event, data = None, "message", []
            elif line.startswith(":"):
                continue  # keep-alive comment, every 15 s
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "id":
                    event_id = value
                elif field == "event":
                    event = value
                elif field == "data":
                    data.append(value)


def run(tenant, channel, state_file):
    url = f"{BASE}/v1/tenants/{tenant}/channels/{channel}/events"
    position = open(state_file).read().strip() if os.path.exists(state_file) else None
    pause = 0.5
    while True:
        try:
            for event_id, event, data in events(url, position):
                pause = 0.5
                if event == "message":
                    deliver(channel, data)
                elif event == "reset":
                    print(f"{channel}: history lost, live from offset {data['top_offset']}"
                          f" of epoch {data['epoch']}", file=sys.stderr, flush=True)
                elif event == "error":
                    print(f"{channel}: {data['code']}; resuming", file=sys.stderr, flush=True)
                    break
                if event_id:
                    position = event_id
                    with open(state_file, "w") as f:
                        f.write(position)
        except (urllib.error.URLError, OSError, ValueError) as error:
            print(f"{channel}: {error}; reconnecting", file=sys.stderr, flush=True)
        time.sleep(pause)
        pause = min(pause * 2, 10)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: gateway.py <tenant> <channel>")
    tenant, channel = sys.argv[1], sys.argv[2]
    run(tenant, channel, f".gateway-{tenant}-{channel}.position")
