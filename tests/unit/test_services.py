import asyncio

from bindu.metrics import SERVICE_RESTARTS
from bindu.server.services import Supervisor
from tests.support.waiting import until


class Flaky:
    name = "flaky"

    def __init__(self) -> None:
        self.starts = 0
        self.running = asyncio.Event()

    async def run(self) -> None:
        self.starts += 1
        if self.starts == 1:
            raise RuntimeError("first run crashes")
        self.running.set()
        await asyncio.Event().wait()


async def test_a_crashed_service_is_restarted_and_counted():
    restarts = SERVICE_RESTARTS.labels("flaky")._value.get()
    service = Flaky()
    supervisor = Supervisor()
    supervisor.start(service)
    try:
        await asyncio.wait_for(service.running.wait(), 10)
        assert service.starts == 2
        assert supervisor.running == ["flaky"]
        assert SERVICE_RESTARTS.labels("flaky")._value.get() == restarts + 1
    finally:
        await supervisor.stop()
    assert supervisor.running == []


async def test_stop_cancels_a_service_in_backoff():
    class AlwaysCrashes:
        name = "crashy"
        calls = 0

        async def run(self) -> None:
            AlwaysCrashes.calls += 1
            raise RuntimeError("boom")

    supervisor = Supervisor()
    supervisor.start(AlwaysCrashes())

    async def crashed_once() -> bool:
        return AlwaysCrashes.calls >= 1

    await until(crashed_once, timeout=5)
    await asyncio.wait_for(supervisor.stop(), 5)  # does not wait out the restart delay
