#!/usr/bin/env python3
"""Service B of tracer's causality tests, Python asyncio (aiohttp server and
ClientSession, one event loop): for each request from A (GET /work/<id> or POST /work
{"item_id"}) it calls C on a new connection and answers with C's reply. With mode "id" the
call carries the id (/price/<id>); with "none" it does not. The `tag` cookie is the tests'
witness only. No tracing code. Usage: relay_aiohttp.py <C port> <id|none>."""
import asyncio
import sys

import aiohttp
from aiohttp import web

c_port, mode = int(sys.argv[1]), sys.argv[2]


async def work(request):
    item = request.match_info.get("item") or (await request.json())["item_id"]
    path = f"/price/{item}" if mode == "id" else "/price"
    async with request.app["session"].get(f"http://127.0.0.1:{c_port}{path}", headers={"Cookie": f"tag={item}"}) as answer:
        body = await answer.read()
    return web.Response(body=body, content_type="application/json")


async def main():
    app = web.Application()
    connector = aiohttp.TCPConnector(force_close=True)
    app["session"] = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
    app.router.add_get("/work/{item}", work)
    app.router.add_post("/work", work)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"PORT {site._server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
