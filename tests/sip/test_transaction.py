"""Non-INVITE client transaction (RFC 3261 §17.1.2) under a fake ``now``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.sip.message import Headers, Request, Response
from gatewayd.sip.transaction import (
    TABLE,
    ClientTransaction,
    FinalResponse,
    LocalProtocolError,
    ProvisionalResponse,
    State,
    TimedOut,
    Timers,
    TransportFailed,
    cseq_of,
    top_branch,
)

BRANCH = "z9hG4bKtest1"
REQUEST = Request(
    method="MESSAGE",
    uri="sip:desk@h",
    headers=Headers.of(
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5999;branch={BRANCH};rport"),
            ("CSeq", "1 MESSAGE"),
            ("Call-ID", "c@h"),
        ]
    ),
    body=b"hi",
)


def response(status: int, *, branch: str = BRANCH, method: str = "MESSAGE") -> Response:
    return Response(
        status=status,
        reason="R",
        headers=Headers.of(
            [("Via", f"SIP/2.0/UDP 127.0.0.1:5999;branch={branch}"), ("CSeq", f"1 {method}")]
        ),
    )


def state_of(tx: ClientTransaction) -> State:
    """The state, read afresh (mypy would keep a narrowed property otherwise)."""
    return tx.state


def run_silent(tx: ClientTransaction, until: float) -> list[float]:
    """Tick at every deadline up to ``until``; return the send times of every copy."""
    sent = [0.0] * len(tx.data_to_send())
    while (deadline := tx.next_deadline()) is not None and deadline <= until:
        tx.tick(deadline)
        sent += [deadline] * len(tx.data_to_send())
    return sent


def test_udp_retransmission_schedule_and_timer_f() -> None:
    tx = ClientTransaction(REQUEST, reliable=False, now=0.0)
    assert tx.state is State.TRYING
    sent = run_silent(tx, 100.0)
    # Timer E: T1, doubling, capped at T2 = 4 s; timer F at 64*T1 = 32 s.
    assert sent == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert tx.transmissions == 11
    event = tx.next_event()
    assert isinstance(event, TimedOut)
    assert event.after == 32.0
    assert state_of(tx) is State.TERMINATED
    assert tx.next_deadline() is None
    assert tx.next_event() is None


def test_tcp_sends_once_then_timer_f() -> None:
    tx = ClientTransaction(REQUEST, reliable=True, now=10.0)
    assert tx.data_to_send() == [REQUEST.to_bytes()]
    assert tx.next_deadline() == 42.0
    tx.tick(41.9)
    assert tx.data_to_send() == []
    tx.tick(42.0)
    assert tx.data_to_send() == []
    assert isinstance(tx.next_event(), TimedOut)
    assert tx.state is State.TERMINATED


def test_custom_timers() -> None:
    tx = ClientTransaction(REQUEST, reliable=False, now=0.0, timers=Timers(t1=0.1, t2=0.3))
    assert run_silent(tx, 10.0)[:6] == pytest.approx([0.0, 0.1, 0.3, 0.6, 0.9, 1.2])
    assert isinstance(tx.next_event(), TimedOut)
    assert Timers(t1=0.1).timer_f == pytest.approx(6.4)


def test_provisional_then_final_udp() -> None:
    tx = ClientTransaction(REQUEST, reliable=False, now=0.0)
    tx.data_to_send()
    assert tx.receive_response(response(100), 0.2)
    assert tx.state is State.PROCEEDING
    assert isinstance(tx.next_event(), ProvisionalResponse)
    # In Proceeding timer E keeps its pending expiry, then fires every T2.
    sent = []
    for now in (0.5, 4.5, 8.5):
        assert tx.next_deadline() == now
        tx.tick(now)
        sent.append(len(tx.data_to_send()))
    assert sent == [1, 1, 1]
    assert tx.receive_response(response(202), 9.0)
    final = tx.next_event()
    assert isinstance(final, FinalResponse)
    assert final.response.status == 202
    assert state_of(tx) is State.COMPLETED
    # Completed: no more retransmissions; retransmitted responses absorbed, no events.
    assert tx.next_deadline() == 14.0  # timer K = T4
    assert tx.receive_response(response(202), 10.0)
    assert tx.receive_response(response(180), 10.0)
    assert tx.next_event() is None
    tx.tick(14.0)
    assert state_of(tx) is State.TERMINATED
    assert tx.data_to_send() == []


def test_final_over_tcp_terminates_at_once() -> None:
    tx = ClientTransaction(REQUEST, reliable=True, now=0.0)
    assert tx.receive_response(response(486), 1.0)
    assert isinstance(tx.next_event(), FinalResponse)
    assert tx.state is State.TERMINATED  # timer K = 0 on reliable transports
    assert tx.next_deadline() is None


def test_non_matching_responses_are_refused() -> None:
    tx = ClientTransaction(REQUEST, reliable=False, now=0.0)
    assert not tx.receive_response(response(200, branch="z9hG4bKother"), 0.1)
    assert not tx.receive_response(response(200, method="INVITE"), 0.1)
    assert not tx.receive_response(Response(status=200), 0.1)
    assert tx.state is State.TRYING
    assert tx.next_event() is None


def test_transport_error() -> None:
    tx = ClientTransaction(REQUEST, reliable=False, now=0.0)
    tx.transport_error("ICMP unreachable", 0.1)
    event = tx.next_event()
    assert isinstance(event, TransportFailed)
    assert event.reason == "ICMP unreachable"
    assert tx.state is State.TERMINATED
    tx.transport_error("again", 0.2)  # ignored once terminated
    assert tx.next_event() is None


def test_late_tick_sends_one_copy_and_keeps_the_series() -> None:
    tx = ClientTransaction(REQUEST, reliable=False, now=0.0)
    tx.data_to_send()
    tx.tick(5.0)  # E was due at 0.5, 1.5 and 3.5
    assert len(tx.data_to_send()) == 1
    assert tx.next_deadline() == 7.5


def test_local_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        ClientTransaction(
            Request(method="INVITE", uri="sip:a@b", headers=REQUEST.headers), reliable=True, now=0
        )
    with pytest.raises(LocalProtocolError):
        ClientTransaction(Request(method="MESSAGE", uri="sip:a@b"), reliable=True, now=0)


def test_helpers() -> None:
    assert top_branch(REQUEST) == BRANCH
    assert top_branch(Request(method="X", uri="sip:a@b")) is None
    assert cseq_of(REQUEST) == (1, "MESSAGE")
    assert cseq_of(Response(status=200, headers=Headers.of({"CSeq": "x MESSAGE"}))) is None
    assert cseq_of(Response(status=200)) is None


def test_table_terminated_is_final() -> None:
    assert TABLE[State.TERMINATED] == {}
    for row in TABLE.values():
        assert all(isinstance(state, State) for state in row.values())


# Every sequence of inputs: the machine stays in a valid state, never raises, emits at most
# one terminal event (final, timeout or transport failure), and time never goes past F.
inputs = st.lists(
    st.tuples(
        st.sampled_from(["1xx", "2xx", "4xx", "other", "tick", "error"]),
        st.floats(0, 5, allow_nan=False),
    ),
    max_size=30,
)


@given(steps=inputs, reliable=st.booleans())
def test_any_input_sequence(steps: list[tuple[str, float]], reliable: bool) -> None:
    tx = ClientTransaction(REQUEST, reliable=reliable, now=0.0)
    now = 0.0
    events = []
    sent = len(tx.data_to_send())
    for kind, delta in steps:
        now += delta
        if kind == "1xx":
            tx.receive_response(response(180), now)
        elif kind == "2xx":
            tx.receive_response(response(200), now)
        elif kind == "4xx":
            tx.receive_response(response(404), now)
        elif kind == "other":
            assert not tx.receive_response(response(200, branch="z9hG4bKx"), now)
        elif kind == "error":
            tx.transport_error("boom", now)
        else:
            tx.tick(now)
        sent += len(tx.data_to_send())
        assert tx.state in State
        while (event := tx.next_event()) is not None:
            events.append(event)
        deadline = tx.next_deadline()
        assert deadline is None or deadline > tx.started
    terminal = [e for e in events if not isinstance(e, ProvisionalResponse)]
    assert len(terminal) <= 1
    if terminal:
        assert tx.state in (State.COMPLETED, State.TERMINATED)
    assert sent == tx.transmissions
    if reliable:
        assert sent == 1
    else:
        assert sent <= 11
