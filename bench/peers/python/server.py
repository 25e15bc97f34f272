"""A plain Python Redis -> WebSocket bridge (websockets + redis-py's asyncio client):
one PSUBSCRIBE, json.loads of the payload and json.dumps of the frame, broadcast to the
clients subscribed to the channel. Same subscribe frame as redis-ws-bridge, so the same
load tool measures both. With JWT_SECRET set, ?token= must be a valid HS256 JWT."""

import asyncio
import json
import os
from datetime import datetime, timezone
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import jwt
import redis.asyncio as aioredis
from websockets.asyncio.server import broadcast, serve

PORT = int(os.environ.get("PORT", "18082"))
PATTERN = os.environ.get("PATTERN", "job:*")
SECRET = os.environ.get("JWT_SECRET", "")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:16379")

topics: dict[str, set] = {}


def authenticate(connection, request):
    if not SECRET:
        return None
    token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
    try:
        connection.user = jwt.decode(token, SECRET, algorithms=["HS256"]).get("sub")
    except jwt.PyJWTError:
        return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid token\n")
    return None


async def handler(ws):
    mine = set()
    try:
        await ws.send(json.dumps({"type": "connected", "user": getattr(ws, "user", None)}))
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if msg.get("type") == "subscribe" and isinstance(msg.get("topics"), list):
                for topic in msg["topics"]:
                    topics.setdefault(topic, set()).add(ws)
                    mine.add(topic)
                await ws.send(json.dumps({"type": "subscribed", "id": msg.get("id"), "topics": msg["topics"]}))
            elif msg.get("type") == "ping":
                await ws.send(json.dumps({"type": "pong", "id": msg.get("id")}))
    finally:
        for topic in mine:
            subscribers = topics.get(topic)
            if subscribers is not None:
                subscribers.discard(ws)
                if not subscribers:
                    del topics[topic]


async def pump():
    client = aioredis.from_url(REDIS_URL)
    pubsub = client.pubsub()
    await pubsub.psubscribe(PATTERN)
    async for message in pubsub.listen():
        if message["type"] != "pmessage":
            continue
        channel = message["channel"].decode()
        subscribers = topics.get(channel)
        if not subscribers:
            continue
        raw = message["data"]
        try:
            data = json.loads(raw)
        except ValueError:
            data = raw.decode(errors="replace")
        frame = json.dumps({
            "type": "message",
            "topic": channel,
            "ts": datetime.now(timezone.utc).isoformat(),
            "data": data,
        })
        broadcast(subscribers, frame)


async def main():
    async with serve(handler, "127.0.0.1", PORT, process_request=authenticate,
                     ping_interval=30, ping_timeout=120, max_queue=16):
        print(f"python peer on 127.0.0.1:{PORT}", flush=True)
        await pump()


if __name__ == "__main__":
    asyncio.run(main())
