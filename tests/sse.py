"""Reading a text/event-stream response in tests (gateway and container tests)."""

from __future__ import annotations

import json


def read_sse(response) -> list[tuple[str, dict]]:
    """(event name, data) of every event of a text/event-stream response, to its end."""
    events, name, data = [], "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            events.append((name, json.loads("\n".join(data))))
            name, data = "message", []
    return events
