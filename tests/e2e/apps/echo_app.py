"""A session's server for the proxy's end-to-end tests (standard library only).

    python echo_app.py PORT SESSION_ID

``GET /`` answers ``hello from SESSION_ID`` (with the request's path and forwarded headers as
JSON on ``/headers``); ``POST /echo`` answers the body it got (streamed back, any size, also
chunked); ``GET /stream?seconds=N`` sends a chunk every 0.5 s for N seconds; ``/ws`` is a
WebSocket echo.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
import time

PORT = int(sys.argv[1])
SESSION = sys.argv[2] if len(sys.argv) > 2 else "?"
#: ``/healthz`` answers 503 until this many seconds after the start (``READY_AFTER``), and
#: after ``/sick-once`` (until the process restarts) or ``/sick`` (a file in the work
#: directory: for good).
READY_AT = time.monotonic() + float(os.environ.get("READY_AFTER", "0"))
SICK = {"once": False}
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return await reader.readexactly(int(headers.get("content-length", "0")))


def answer(status: str, body: bytes, content_type: str = "text/plain") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: str) -> None:
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    writer.write(
        (
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            f"sec-websocket-accept: {accept}\r\n\r\n"
        ).encode()
    )
    while True:
        b1, b2 = await reader.readexactly(2)
        opcode, length = b1 & 0x0F, b2 & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        mask = await reader.readexactly(4) if b2 & 0x80 else b"\0\0\0\0"
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(length)))
        if opcode == 0x8:
            writer.write(b"\x88\x00")
            await writer.drain()
            return
        if opcode == 0x9:  # ping -> pong
            opcode = 0xA
        elif opcode == 0xA:
            continue
        header = bytes([0x80 | opcode])
        if len(data) < 126:
            header += bytes([len(data)])
        else:
            header += bytes([126]) + len(data).to_bytes(2, "big")
        writer.write(header + data)
        await writer.drain()


async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            _method, target, _ = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                if line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            path, _, query = target.partition("?")
            if path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
                await websocket(reader, writer, headers["sec-websocket-key"])
                return
            body = await read_body(reader, headers)
            if path == "/echo":
                writer.write(answer("200 OK", body, "application/octet-stream"))
            elif path == "/healthz":
                sick = SICK["once"] or os.path.exists("sick") or time.monotonic() < READY_AT
                status = "503 Service Unavailable" if sick else "200 OK"
                writer.write(answer(status, b"sick\n" if sick else b"ok\n"))
            elif path == "/sick-once":
                SICK["once"] = True
                writer.write(answer("200 OK", b"sick until restarted\n"))
            elif path == "/sick":
                with open("sick", "w") as mark:
                    mark.write("sick\n")
                writer.write(answer("200 OK", b"sick for good\n"))
            elif path == "/headers":
                seen = {"path": path, "query": query, "headers": headers, "session": SESSION}
                writer.write(answer("200 OK", json.dumps(seen).encode(), "application/json"))
            elif path == "/stream":
                seconds = float(query.partition("=")[2] or "1")
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                for i in range(int(seconds * 2)):
                    data = f"tick {i}\n".encode()
                    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.5)
                writer.write(b"0\r\n\r\n")
            else:
                page = f"<!doctype html><title>session</title><h1>hello from {SESSION}</h1>"
                writer.write(answer("200 OK", page.encode(), "text/html; charset=utf-8"))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(client, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()


asyncio.run(main())
