"""A submit through a bind that is stopping or whose connection just closed must return.

Before the fix, SmppBind.is_bound stayed true after bind.stop() until the bind's own task
ran, and the submitter retried NotBound without ever awaiting: the event loop froze (no
acks, no shutdown). The scenario runs in a subprocess so a freeze fails by timeout
instead of hanging the test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import types
    import trio
    from gatewayd.outbound import Submitter
    from gatewayd.smpp.driver import BindSettings, SmppBind
    from gatewayd.smpp.simulator import Simulator, SimulatorSettings

    async def main():
        sim = Simulator(SimulatorSettings(port=0, password="pw"))
        async with trio.open_nursery() as nursery:
            port = await nursery.start(sim.serve)
            bind = SmppBind(
                BindSettings(carrier="c", host="127.0.0.1", port=port, system_id="gw",
                             password="pw"),
                name="c#1",
            )
            nursery.start_soon(bind.run)
            with trio.fail_after(10):
                while not bind.is_bound:
                    await trio.sleep(0.01)
            sub = Submitter(types.SimpleNamespace(name="c", throughput=None), lambda: [bind])
            first = await sub.submit(dict(source_addr="1", destination_addr="2",
                                          short_message=b"a"))
            print("first", first.message_id)
            bind.stop()  # what SIGTERM does; the submit below runs before the bind reacts
            second = await sub.submit(dict(source_addr="1", destination_addr="2",
                                           short_message=b"b"))
            print("second", second.message_id, second.error)
            nursery.cancel_scope.cancel()

    trio.run(main)
    """
)


def test_submit_through_a_stopping_bind_returns() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "first 00000001"
    assert lines[1].startswith("second None")
    assert "no bound bind" in lines[1]
