"""A `websockets` client (it offers permessage-deflate by default), for tests/it/compression.rs.

Usage: python deflate.py URL, then one JSON command per stdin line:
  {"op": "send", "text": ...}, {"op": "close"}
Output lines, as tests/clients/node/deflate.js writes them: {"event": "open", "value":
{"extensions": the 101's Sec-WebSocket-Extensions}}, {"event": "message", "value": {"data"}},
{"event": "close", "value": {"code", "reason"}}. It exits once the connection is closed.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def event(name, value):
    print(json.dumps({"event": name, "value": value}), flush=True)


async def commands(ws):
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        if not line.strip():
            continue
        command = json.loads(line)
        if command["op"] == "send":
            await ws.send(command["text"])
        elif command["op"] == "close":
            await ws.close(1000)
            return
        else:
            raise ValueError(f"unknown op {command['op']}")


async def main(url):
    # No size limit of the client's own: the bridge's frames are what is under test.
    async with connect(url, max_size=None) as ws:
        event("open", {"extensions": ws.response.headers.get("Sec-WebSocket-Extensions")})
        sender = asyncio.ensure_future(commands(ws))
        try:
            async for message in ws:
                event("message", {"data": message if isinstance(message, str) else None})
        except ConnectionClosed:
            pass
        sender.cancel()
        event("close", {"code": ws.close_code, "reason": ws.close_reason})


asyncio.run(main(sys.argv[1]))
