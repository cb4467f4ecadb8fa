"""A relay between unix sockets, run as a process: ``python unix_relay.py LISTEN TARGET``
accepts on LISTEN and pipes each connection to TARGET until it is killed (then every relayed
connection drops at once, as when the engine behind TARGET dies). Used by
``engines.SocketRelay``; no dependency beyond Python."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def main(listen: str, target: str) -> None:
    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            target_r, target_w = await asyncio.open_unix_connection(target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, target_w), pipe(target_r, client_w))

    with contextlib.suppress(FileNotFoundError):
        os.unlink(listen)
    server = await asyncio.start_unix_server(relay, listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
