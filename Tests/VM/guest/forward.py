"""Relays 127.0.0.1:PORT in the guest to 10.0.2.100:PORT, which QEMU's guestfwd connects to the
host's 127.0.0.1:PORT: the agent talks to the address it enrolled with, unchanged."""
import asyncio
import sys

PORT = int(sys.argv[1])


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def handle(reader, writer):
    try:
        up_reader, up_writer = await asyncio.open_connection("10.0.2.100", PORT)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()


asyncio.run(main())
