"""New settings swapped into a serving gateway: routes, leases, admissions, the listing.

In-process and without workers: a route's channel is made but never used here. The
served behaviour (calls flowing through a change) is tests/repository/test_hot.py's.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc

from protos.dcf.v1 import dcf_pb2
from server.config import FunctionConfig, Settings
from server.gateway.core import Gateway, GatewayServicer
from server.gateway.routing import Routes

ONE = FunctionConfig("one", "handlers.hello", workers=("127.0.0.1:1",), max_concurrency=2)
TWO = FunctionConfig("two", "handlers.hello", workers=("127.0.0.1:2",))


def test_a_replaced_route_drains_its_leases_before_it_closes():
    async def scenario() -> None:
        routes = Routes([ONE, TWO], 1 << 20)
        first = routes.route("one")
        two = routes.route("two")
        with routes.lease("one") as held:
            assert held is first and first.leases == 1
            moved = replace(ONE, workers=("127.0.0.1:3",))
            retired = routes.update([moved, TWO])
            assert retired == {"one": first} and first.retired
            assert routes.route("two") is two, "unchanged workers keep their route"
            with routes.lease("one") as fresh:
                assert fresh is not first and fresh.workers == ("127.0.0.1:3",)
            await asyncio.sleep(0)
            assert not first.drained.is_set(), "a call still holds the old route"
            state = first.channel.get_state()
            assert state != grpc.ChannelConnectivity.SHUTDOWN
        await asyncio.wait_for(first.drained.wait(), 5)
        retired = routes.update([])
        assert set(retired) == {"one", "two"} and routes.route("one") is None
        with routes.lease("one") as gone:
            assert gone is None
        await routes.close()

    asyncio.run(scenario())


def test_gateway_update_swaps_settings_admissions_and_the_listing():
    async def scenario() -> None:
        settings = Settings(functions=(ONE, TWO))
        routes = Routes(settings.functions, 1 << 20)
        gateway = Gateway(settings, routes)
        servicer = GatewayServicer(gateway)
        request = dcf_pb2.ListFunctionsRequest()
        listed = await servicer.ListFunctions(request, None)
        assert [fn.name for fn in listed.functions] == ["one", "two"]
        admission = gateway._admissions["one"]

        described = replace(ONE, description="the same limits")
        gateway.update(replace(settings, functions=(described, TWO)))
        assert gateway._admissions["one"] is admission, "same limits: the same queue"
        assert gateway.resolve("one").description == "the same limits"

        wider = replace(ONE, max_concurrency=4)
        three = FunctionConfig("three", "handlers.hello", workers=("127.0.0.1:4",))
        retired = gateway.update(replace(settings, functions=(wider, three)))
        assert set(retired) == {"two"}
        assert gateway._admissions["one"] is not admission
        assert gateway._admissions["one"].limit == 4
        relisted = await servicer.ListFunctions(request, None)
        assert [fn.name for fn in relisted.functions] == ["one", "three"]
        assert gateway.settings.function("two") is None
        await routes.close()

    asyncio.run(scenario())
