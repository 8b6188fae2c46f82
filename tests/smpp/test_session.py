"""The sans-I/O SMPP session, in the manner of h11's tests: an ESME and an SMSC Session
wired back to back by shuttling ``data_to_send()`` into ``receive_data()``; no sockets."""

from __future__ import annotations

import itertools
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as label
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gatewayd.smpp import pdu
from gatewayd.smpp.pdu import Pdu
from gatewayd.smpp.session import (
    BOUND_STATES,
    MAX_SEQUENCE,
    AlertReceived,
    BindFailed,
    BindRequested,
    Bound,
    ConnectionClosed,
    Event,
    LocalProtocolError,
    OutbindReceived,
    ProtocolError,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    Role,
    Session,
    State,
    Unbound,
    WindowFull,
    may_receive,
    may_send,
)

Kind = Literal["transmitter", "receiver", "transceiver"]
KIND_STATE: dict[Kind, State] = {
    "transmitter": State.BOUND_TX,
    "receiver": State.BOUND_RX,
    "transceiver": State.BOUND_TRX,
}

MESSAGE: dict[str, Any] = {
    "source_addr": "447700900123",
    "destination_addr": "12345",
    "short_message": b"hello",
}
EXAMPLE_FIELDS: dict[str, dict[str, Any]] = {
    "bind_transmitter": {"system_id": "esme", "password": "pw"},
    "bind_receiver": {"system_id": "esme", "password": "pw"},
    "bind_transceiver": {"system_id": "esme", "password": "pw"},
    "submit_sm": MESSAGE,
    "deliver_sm": MESSAGE,
    "data_sm": {"source_addr": "447700900123", "destination_addr": "12345"},
    "alert_notification": {"source_addr": "447700900123", "esme_addr": "12345"},
    "outbind": {"system_id": "smsc", "password": "pw"},
    "enquire_link": {},
    "unbind": {},
}
REQUESTS = sorted(EXAMPLE_FIELDS)


def example(command: str, sequence: int) -> Pdu:
    return pdu.make(command, sequence=sequence, **EXAMPLE_FIELDS[command])


def wire(command: str, sequence: int) -> bytes:
    return pdu.encode(example(command, sequence))


def drain(session: Session) -> list[Event]:
    out: list[Event] = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def sent_pdus(session: Session) -> list[Pdu]:
    """Decode everything the session wants to send."""
    framer = pdu.Framer(pdu.DEFAULT_MAX_COMMAND_LENGTH)
    framer.feed(session.data_to_send())
    out = []
    while (frame := framer.next_frame()) is not None:
        out.append(pdu.decode(frame))
    return out


class Pair:
    """An ESME and an SMSC session connected back to back, sharing a fake clock."""

    def __init__(
        self,
        *,
        esme_opts: dict[str, Any] | None = None,
        smsc_opts: dict[str, Any] | None = None,
        **common: Any,
    ) -> None:
        self.esme = Session(role=Role.ESME, **{**common, **(esme_opts or {})})
        self.smsc = Session(role=Role.SMSC, **{**common, **(smsc_opts or {})})
        self.now = 0.0

    def flush(self) -> tuple[list[Event], list[Event]]:
        """Shuttle bytes both ways until both are quiet; return (esme, smsc) events."""
        esme_events: list[Event] = []
        smsc_events: list[Event] = []
        while True:
            to_smsc = self.esme.data_to_send()
            to_esme = self.smsc.data_to_send()
            if to_smsc:
                self.smsc.receive_data(to_smsc, self.now)
            if to_esme:
                self.esme.receive_data(to_esme, self.now)
            esme_events += drain(self.esme)
            smsc_events += drain(self.smsc)
            if not to_smsc and not to_esme:
                return esme_events, smsc_events

    def tick(self, now: float) -> tuple[list[Event], list[Event]]:
        self.now = now
        self.esme.tick(now)
        self.smsc.tick(now)
        return self.flush()

    def bind(self, kind: Kind = "transceiver", status: int = pdu.ESME_ROK) -> list[Event]:
        self.esme.send_bind(kind, self.now, system_id="esme", password="secret")
        esme_events, smsc_events = self.flush()
        assert esme_events == []
        [requested] = smsc_events
        assert isinstance(requested, BindRequested)
        assert requested.pdu.command == f"bind_{kind}"
        assert requested.pdu.get_bytes("system_id") == b"esme"
        self.smsc.respond(requested.pdu, status, system_id="smsc")
        esme_events, smsc_events = self.flush()
        assert smsc_events == []
        return esme_events


def bound_pair(kind: Kind = "transceiver", **opts: Any) -> Pair:
    pair = Pair(**opts)
    [bound] = pair.bind(kind)
    assert isinstance(bound, Bound)
    return pair


# ------------------------------------------------------------------------------ binding


@pytest.mark.parametrize("kind", ["transmitter", "receiver", "transceiver"])
def test_bind_each_kind(kind: Kind) -> None:
    pair = Pair()
    assert pair.esme.state is State.OPEN
    [bound] = pair.bind(kind)
    assert isinstance(bound, Bound)
    assert bound.state is KIND_STATE[kind]
    assert bound.pdu.command == f"bind_{kind}_resp"
    assert bound.pdu.get_bytes("system_id") == b"smsc"
    assert pair.esme.state is pair.smsc.state is KIND_STATE[kind]


def test_bind_rejected_closes_the_esme() -> None:
    pair = Pair()
    events = pair.bind("transmitter", pdu.ESME_RINVPASWD)
    assert [type(e) for e in events] == [BindFailed, ConnectionClosed]
    assert isinstance(events[0], BindFailed)
    assert events[0].status == pdu.ESME_RINVPASWD
    assert pair.esme.state is State.CLOSED
    assert pair.smsc.state is State.OPEN  # the ESME will hang up
    assert pair.esme.next_deadline() is None


def test_bind_rejected_with_generic_nack() -> None:
    esme = Session(role=Role.ESME)
    seq = esme.send_bind("receiver", 0.0, system_id="a", password="b")
    esme.data_to_send()
    nack = pdu.make("generic_nack", sequence=seq, status=pdu.ESME_RINVCMDID)
    esme.receive_data(pdu.encode(nack), 0.0)
    events = drain(esme)
    assert [type(e) for e in events] == [BindFailed, ConnectionClosed]


def test_bind_response_timeout() -> None:
    esme = Session(role=Role.ESME, response_timeout=5.0)
    esme.send_bind("transceiver", 0.0, system_id="a", password="b")
    assert esme.next_deadline() == 5.0
    esme.tick(4.9)
    assert drain(esme) == []
    esme.tick(5.0)
    events = drain(esme)
    assert [type(e) for e in events] == [RequestTimedOut, ConnectionClosed]
    assert esme.state is State.CLOSED


def test_second_bind_is_local_error_and_already_bound_gets_ralybnd() -> None:
    pair = bound_pair()
    with pytest.raises(LocalProtocolError):
        pair.esme.send_bind("transmitter", 0.0, system_id="a", password="b")
    pair.smsc.receive_data(wire("bind_transmitter", 99), 0.0)
    [error] = drain(pair.smsc)
    assert isinstance(error, ProtocolError)
    assert not error.fatal
    [resp] = sent_pdus(pair.smsc)
    assert (resp.command, resp.status, resp.sequence) == (
        "bind_transmitter_resp",
        pdu.ESME_RALYBND,
        99,
    )
    assert pair.smsc.state is State.BOUND_TRX


def test_bind_while_bind_pending_gets_ralybnd() -> None:
    smsc = Session(role=Role.SMSC)
    smsc.receive_data(wire("bind_receiver", 1), 0.0)
    [requested] = drain(smsc)
    assert isinstance(requested, BindRequested)
    smsc.receive_data(wire("bind_receiver", 2), 0.0)
    [resp] = sent_pdus(smsc)
    assert (resp.status, resp.sequence) == (pdu.ESME_RALYBND, 2)
    smsc.respond(requested.pdu, pdu.ESME_ROK, system_id="smsc")
    assert smsc.state is State.BOUND_RX


def test_smsc_refusing_a_bind_stays_open() -> None:
    smsc = Session(role=Role.SMSC)
    smsc.receive_data(wire("bind_transceiver", 1), 0.0)
    [requested] = drain(smsc)
    assert isinstance(requested, BindRequested)
    assert smsc.pending_incoming == 1
    smsc.respond(requested.pdu, pdu.ESME_RBINDFAIL, system_id="smsc")
    assert smsc.pending_incoming == 0
    assert smsc.state is State.OPEN
    [resp] = sent_pdus(smsc)
    assert resp.status == pdu.ESME_RBINDFAIL


def test_outbind_then_bind_receiver() -> None:
    pair = Pair()
    pair.smsc.send_request("outbind", 0.0, system_id="smsc", password="pw")
    esme_events, _ = pair.flush()
    [outbind] = esme_events
    assert isinstance(outbind, OutbindReceived)
    assert outbind.pdu.get_bytes("system_id") == b"smsc"
    [bound] = pair.bind("receiver")
    assert isinstance(bound, Bound)


# ------------------------------------------------------------------- requests/responses


def test_deliver_sm_round_trip() -> None:
    pair = bound_pair("receiver")
    seq = pair.smsc.send_request("deliver_sm", 0.0, **MESSAGE)
    esme_events, _ = pair.flush()
    [received] = esme_events
    assert isinstance(received, RequestReceived)
    assert received.pdu.sequence == seq
    assert received.pdu.get_bytes("short_message") == b"hello"
    assert pair.esme.pending_incoming == 1
    assert pair.smsc.window_free == 9
    pair.esme.respond(received.pdu)
    assert pair.esme.pending_incoming == 0
    with pytest.raises(LocalProtocolError):
        pair.esme.respond(received.pdu)  # answered already
    _, smsc_events = pair.flush()
    [response] = smsc_events
    assert isinstance(response, ResponseReceived)
    assert response.request.sequence == response.response.sequence == seq
    assert response.response.command == "deliver_sm_resp"
    assert response.response.status == pdu.ESME_ROK
    assert pair.smsc.window_free == 10


def test_submit_sm_round_trip_with_message_id() -> None:
    pair = bound_pair("transmitter")
    pair.esme.send_request("submit_sm", 0.0, **MESSAGE)
    _, smsc_events = pair.flush()
    [received] = smsc_events
    assert isinstance(received, RequestReceived)
    pair.smsc.respond(received.pdu, pdu.ESME_ROK, message_id="abc123")
    esme_events, _ = pair.flush()
    [response] = esme_events
    assert isinstance(response, ResponseReceived)
    assert response.response.get_bytes("message_id") == b"abc123"


def test_respond_to_unknown_request_is_local_error() -> None:
    pair = bound_pair()
    with pytest.raises(LocalProtocolError):
        pair.esme.respond(example("deliver_sm", 5))


def test_alert_notification_is_not_answered() -> None:
    pair = bound_pair("receiver")
    pair.smsc.send_request("alert_notification", 0.0, **EXAMPLE_FIELDS["alert_notification"])
    assert pair.smsc.window_free == 10  # no response expected: never outstanding
    esme_events, _ = pair.flush()
    [alert] = esme_events
    assert isinstance(alert, AlertReceived)
    assert pair.esme.data_to_send() == b""


def test_window_limit() -> None:
    pair = bound_pair("transmitter", window=3)
    for _ in range(3):
        pair.esme.send_request("submit_sm", 0.0, **MESSAGE)
    assert pair.esme.window_free == 0
    with pytest.raises(WindowFull):
        pair.esme.send_request("submit_sm", 0.0, **MESSAGE)
    # Keep-alive does not count against the window (it must work when the window is full).
    pair.esme.send_request("enquire_link", 0.0)
    esme_events, smsc_events = pair.flush()
    [response] = esme_events
    assert isinstance(response, ResponseReceived)
    assert response.response.command == "enquire_link_resp"
    first = smsc_events[0]
    assert isinstance(first, RequestReceived)
    pair.smsc.respond(first.pdu, pdu.ESME_ROK, message_id="1")
    pair.flush()
    assert pair.esme.window_free == 1
    pair.esme.send_request("submit_sm", 0.0, **MESSAGE)
    assert pair.esme.window_free == 0


def test_out_of_order_responses() -> None:
    pair = bound_pair("transmitter")
    seqs = [pair.esme.send_request("submit_sm", 0.0, **MESSAGE) for _ in range(3)]
    _, smsc_events = pair.flush()
    for event in reversed(smsc_events):
        assert isinstance(event, RequestReceived)
        pair.smsc.respond(event.pdu, pdu.ESME_ROK, message_id=str(event.pdu.sequence))
    esme_events, _ = pair.flush()
    got = []
    for event in esme_events:
        assert isinstance(event, ResponseReceived)
        assert event.request.sequence == event.response.sequence
        assert event.response.get_bytes("message_id") == str(event.request.sequence).encode()
        got.append(event.request.sequence)
    assert got == list(reversed(seqs))


def test_generic_nack_for_our_request_is_a_response() -> None:
    pair = bound_pair("transmitter")
    seq = pair.esme.send_request("submit_sm", 0.0, **MESSAGE)
    pair.esme.data_to_send()
    nack = pdu.make("generic_nack", sequence=seq, status=pdu.ESME_RINVCMDID)
    pair.esme.receive_data(pdu.encode(nack), 0.0)
    [response] = drain(pair.esme)
    assert isinstance(response, ResponseReceived)
    assert response.response.command == "generic_nack"
    assert pair.esme.window_free == 10


def test_unexpected_response_is_non_fatal() -> None:
    pair = bound_pair("transmitter")
    resp = pdu.make("submit_sm_resp", sequence=1234, message_id="x")
    pair.esme.receive_data(pdu.encode(resp), 0.0)
    [error] = drain(pair.esme)
    assert isinstance(error, ProtocolError)
    assert not error.fatal
    assert pair.esme.state is State.BOUND_TX


def test_response_of_the_wrong_command_does_not_match() -> None:
    pair = bound_pair("transmitter")
    seq = pair.esme.send_request("submit_sm", 0.0, **MESSAGE)
    pair.esme.data_to_send()
    pair.esme.receive_data(pdu.encode(pdu.make("data_sm_resp", sequence=seq)), 0.0)
    [error] = drain(pair.esme)
    assert isinstance(error, ProtocolError)
    assert pair.esme.window_free == 9


def test_duplicate_pending_sequence_is_refused_temporarily() -> None:
    pair = bound_pair("receiver")
    pair.esme.receive_data(wire("deliver_sm", 7), 0.0)
    pair.esme.receive_data(wire("deliver_sm", 7), 0.0)
    events = drain(pair.esme)
    assert [type(e) for e in events] == [RequestReceived, ProtocolError]
    [resp] = sent_pdus(pair.esme)
    assert (resp.command, resp.status) == ("deliver_sm_resp", pdu.ESME_RX_T_APPN)
    assert pair.esme.pending_incoming == 1


def test_response_timeout_frees_the_slot() -> None:
    pair = bound_pair("transmitter", response_timeout=5.0, enquire_link_interval=100.0)
    pair.now = 1.0
    seq = pair.esme.send_request("submit_sm", 1.0, **MESSAGE)
    _, smsc_events = pair.flush()
    [received] = smsc_events
    assert isinstance(received, RequestReceived)
    assert pair.esme.next_deadline() == 6.0
    pair.esme.tick(5.9)
    assert drain(pair.esme) == []
    pair.esme.tick(6.0)
    [timed_out] = drain(pair.esme)
    assert isinstance(timed_out, RequestTimedOut)
    assert timed_out.request.sequence == seq
    assert pair.esme.window_free == 10
    assert pair.esme.outstanding == ()
    # The late answer no longer matches anything: reported, not fatal.
    pair.smsc.respond(received.pdu, pdu.ESME_ROK, message_id="late")
    esme_events, _ = pair.flush()
    [late] = esme_events
    assert isinstance(late, ProtocolError)
    assert not late.fatal


# ------------------------------------------------------------------------------- timers


def test_enquire_link_on_idle_link() -> None:
    pair = bound_pair(enquire_link_interval=10.0, response_timeout=5.0)
    assert pair.esme.next_deadline() == 10.0
    pair.esme.tick(9.9)
    assert pair.esme.data_to_send() == b""
    pair.now = 10.0
    pair.esme.tick(10.0)
    assert pair.esme.next_deadline() == 15.0  # now waiting for the enquire_link_resp
    esme_events, smsc_events = pair.flush()
    # Keep-alive is the session's business: answered automatically, no app events.
    assert esme_events == smsc_events == []
    assert pair.esme.next_deadline() == 20.0
    assert pair.smsc.next_deadline() == 20.0  # the SMSC heard from us at 10.0 too
    assert pair.esme.state is State.BOUND_TRX


def test_traffic_postpones_enquire_link() -> None:
    pair = bound_pair("receiver", enquire_link_interval=10.0)
    pair.now = 8.0
    pair.smsc.send_request("deliver_sm", 8.0, **MESSAGE)
    pair.flush()
    assert pair.esme.next_deadline() == 18.0


def test_dead_link_detected_by_enquire_link() -> None:
    pair = bound_pair(enquire_link_interval=10.0, response_timeout=5.0)
    pair.esme.tick(10.0)
    [enquire] = sent_pdus(pair.esme)  # lost in a half-open TCP connection
    assert enquire.command == "enquire_link"
    pair.esme.tick(12.0)
    assert drain(pair.esme) == []
    pair.esme.tick(15.0)
    events = drain(pair.esme)
    assert [type(e) for e in events] == [ProtocolError, ConnectionClosed]
    assert isinstance(events[0], ProtocolError)
    assert events[0].fatal
    assert "enquire_link" in events[0].reason
    assert pair.esme.state is State.CLOSED
    assert pair.esme.next_deadline() is None


def test_incoming_enquire_link_is_answered() -> None:
    pair = bound_pair("receiver")
    pair.esme.receive_data(wire("enquire_link", 42), 3.0)
    assert drain(pair.esme) == []
    [resp] = sent_pdus(pair.esme)
    assert (resp.command, resp.sequence, resp.status) == ("enquire_link_resp", 42, 0)


def test_inactivity_unbinds_despite_keep_alive() -> None:
    pair = bound_pair(
        enquire_link_interval=10.0, response_timeout=5.0, esme_opts={"inactivity_timeout": 60.0}
    )
    for t in range(10, 60, 10):
        esme_events, smsc_events = pair.tick(float(t))
        assert esme_events == smsc_events == []
        assert pair.esme.state is State.BOUND_TRX
    assert pair.esme.next_deadline() == 60.0
    esme_events, smsc_events = pair.tick(60.0)
    assert [type(e) for e in esme_events] == [Unbound, ConnectionClosed]
    assert isinstance(esme_events[1], ConnectionClosed)
    assert "inactivity" in esme_events[1].reason
    assert [type(e) for e in smsc_events] == [Unbound, ConnectionClosed]


def test_inactivity_before_bind_closes() -> None:
    smsc = Session(role=Role.SMSC, inactivity_timeout=30.0)
    smsc.tick(0.0)
    assert smsc.next_deadline() == 30.0
    smsc.tick(30.0)
    [closed] = drain(smsc)
    assert isinstance(closed, ConnectionClosed)


# ------------------------------------------------------------------------------- unbind


def test_unbind_from_esme() -> None:
    pair = bound_pair()
    pair.esme.unbind(0.0)
    assert pair.esme.state is State.BOUND_TRX  # until the unbind_resp
    with pytest.raises(LocalProtocolError):
        pair.esme.send_request("submit_sm", 0.0, **MESSAGE)
    with pytest.raises(LocalProtocolError):
        pair.esme.unbind(0.0)
    esme_events, smsc_events = pair.flush()
    assert [type(e) for e in esme_events] == [Unbound, ConnectionClosed]
    assert [type(e) for e in smsc_events] == [Unbound, ConnectionClosed]
    assert pair.esme.state is pair.smsc.state is State.CLOSED


def test_unbind_from_smsc_closes_after_the_resp_is_handed_over() -> None:
    pair = bound_pair()
    pair.smsc.unbind(0.0)
    pair.esme.receive_data(pair.smsc.data_to_send(), 0.0)
    [unbound] = drain(pair.esme)
    assert isinstance(unbound, Unbound)
    states = [pair.esme.state]
    resp = pair.esme.data_to_send()
    [closed] = drain(pair.esme)
    assert isinstance(closed, ConnectionClosed)
    states.append(pair.esme.state)
    assert states == [State.UNBOUND, State.CLOSED]
    pair.smsc.receive_data(resp, 0.0)
    assert [type(e) for e in drain(pair.smsc)] == [Unbound, ConnectionClosed]


def test_simultaneous_unbind() -> None:
    pair = bound_pair()
    pair.esme.unbind(0.0)
    pair.smsc.unbind(0.0)
    esme_events, smsc_events = pair.flush()
    assert [type(e) for e in esme_events] == [Unbound, ConnectionClosed]
    assert [type(e) for e in smsc_events] == [Unbound, ConnectionClosed]


def test_unbind_resp_timeout_closes() -> None:
    pair = bound_pair(response_timeout=5.0)
    pair.esme.unbind(1.0)
    pair.esme.data_to_send()
    pair.esme.tick(6.0)
    [closed] = drain(pair.esme)
    assert isinstance(closed, ConnectionClosed)
    assert pair.esme.state is State.CLOSED


def test_answer_after_peer_unbind_is_dropped() -> None:
    pair = bound_pair("receiver")
    pair.smsc.send_request("deliver_sm", 0.0, **MESSAGE)
    esme_events, _ = pair.flush()
    [received] = esme_events
    assert isinstance(received, RequestReceived)
    pair.smsc.unbind(0.0)
    pair.flush()
    assert pair.esme.state is State.CLOSED
    pair.esme.respond(received.pdu)  # the carrier will redeliver: no error, nothing sent
    assert pair.esme.data_to_send() == b""


# ------------------------------------------------------------------- peer misbehaviour


def test_wrong_state_request_gets_rinvbndsts() -> None:
    pair = bound_pair("transmitter")
    pair.esme.receive_data(wire("deliver_sm", 7), 0.0)
    [error] = drain(pair.esme)
    assert isinstance(error, ProtocolError)
    assert not error.fatal
    [resp] = sent_pdus(pair.esme)
    assert (resp.command, resp.status, resp.sequence) == (
        "deliver_sm_resp",
        pdu.ESME_RINVBNDSTS,
        7,
    )
    assert pair.esme.pending_incoming == 0


def test_illegal_local_requests() -> None:
    rx = bound_pair("receiver")
    with pytest.raises(LocalProtocolError):
        rx.esme.send_request("submit_sm", 0.0, **MESSAGE)
    tx = bound_pair("transmitter")
    with pytest.raises(LocalProtocolError):
        tx.smsc.send_request("deliver_sm", 0.0, **MESSAGE)
    fresh = Session(role=Role.ESME)
    with pytest.raises(LocalProtocolError):
        fresh.send_request("enquire_link", 0.0)
    with pytest.raises(LocalProtocolError):
        fresh.unbind(0.0)


def test_unknown_command_gets_generic_nack_and_session_goes_on() -> None:
    pair = bound_pair("receiver")
    header = (16).to_bytes(4, "big") + (0x99).to_bytes(4, "big") + bytes(4)
    pair.esme.receive_data(header + (77).to_bytes(4, "big"), 0.0)
    [error] = drain(pair.esme)
    assert isinstance(error, ProtocolError)
    assert not error.fatal
    [nack] = sent_pdus(pair.esme)
    assert (nack.command, nack.status, nack.sequence) == (
        "generic_nack",
        pdu.ESME_RINVCMDID,
        77,
    )
    pair.smsc.send_request("deliver_sm", 0.0, **MESSAGE)
    esme_events, _ = pair.flush()
    assert [type(e) for e in esme_events] == [RequestReceived]


def test_malformed_deliver_sm_gets_its_resp_with_an_error() -> None:
    pair = bound_pair("receiver")
    body = b"\x00\x01"  # service_type then a truncated source address: no terminating NUL
    frame = (16 + len(body)).to_bytes(4, "big") + pdu.DELIVER_SM.to_bytes(4, "big")
    pair.esme.receive_data(frame + bytes(4) + (5).to_bytes(4, "big") + body, 0.0)
    [error] = drain(pair.esme)
    assert isinstance(error, ProtocolError)
    assert not error.fatal
    [resp] = sent_pdus(pair.esme)
    assert resp.command == "deliver_sm_resp"
    assert resp.sequence == 5
    assert resp.status != pdu.ESME_ROK
    assert pair.esme.state is State.BOUND_RX


def test_huge_command_length_is_fatal() -> None:
    pair = bound_pair()
    header = b"\xff\xff\xff\xff" + pdu.DELIVER_SM.to_bytes(4, "big") + bytes(4)
    pair.esme.receive_data(header + (3).to_bytes(4, "big"), 0.0)
    events = drain(pair.esme)
    assert [type(e) for e in events] == [ProtocolError, ConnectionClosed]
    assert isinstance(events[0], ProtocolError)
    assert events[0].fatal
    assert pair.esme.state is State.CLOSED
    # Best effort: tell the peer why, then unbind.
    assert [p.command for p in sent_pdus(pair.esme)] == ["generic_nack", "unbind"]
    pair.esme.receive_data(wire("enquire_link", 9), 0.0)  # ignored from now on
    assert drain(pair.esme) == []
    assert pair.esme.data_to_send() == b""


def test_eof_closes() -> None:
    pair = bound_pair()
    pair.esme.receive_data(b"", 0.0)
    [closed] = drain(pair.esme)
    assert isinstance(closed, ConnectionClosed)
    assert pair.esme.state is State.CLOSED
    assert pair.esme.next_deadline() is None
    pair.esme.tick(1000.0)
    assert drain(pair.esme) == []


def test_local_close() -> None:
    pair = bound_pair()
    pair.esme.send_request("submit_sm", 0.0, **MESSAGE)
    pair.esme.close()
    assert pair.esme.state is State.CLOSED
    assert pair.esme.data_to_send() == b""
    assert [type(e) for e in drain(pair.esme)] == [ConnectionClosed]
    with pytest.raises(LocalProtocolError):
        pair.esme.send_request("submit_sm", 0.0, **MESSAGE)


def test_malformed_response_is_reported_not_answered() -> None:
    pair = bound_pair()
    header = (16).to_bytes(4, "big") + (0x80000099).to_bytes(4, "big") + bytes(8)
    pair.esme.receive_data(header, 0.0)
    [error] = drain(pair.esme)
    assert isinstance(error, ProtocolError)
    assert not error.fatal
    assert pair.esme.data_to_send() == b""


def test_codec_bug_does_not_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = bound_pair("receiver")

    def broken(frame: bytes) -> Pdu:
        raise RuntimeError("codec bug")

    monkeypatch.setattr(pdu, "decode", broken)
    pair.esme.receive_data(wire("deliver_sm", 3), 0.0)
    [error] = drain(pair.esme)
    assert isinstance(error, ProtocolError)
    assert not error.fatal
    monkeypatch.undo()
    [nack] = sent_pdus(pair.esme)
    assert (nack.command, nack.status) == ("generic_nack", pdu.ESME_RSYSERR)


def test_app_enquire_link_unanswered_is_fatal_too() -> None:
    pair = bound_pair(response_timeout=5.0, enquire_link_interval=100.0)
    pair.esme.send_request("enquire_link", 0.0)
    pair.esme.data_to_send()
    pair.esme.tick(5.0)
    events = drain(pair.esme)
    assert [type(e) for e in events] == [RequestTimedOut, ProtocolError, ConnectionClosed]


def test_bad_fields_are_local_errors() -> None:
    pair = bound_pair()
    with pytest.raises(LocalProtocolError):
        pair.esme.send_request("submit_sm", 0.0, no_such_field=1)
    with pytest.raises(ValueError, match="window"):
        Session(role=Role.ESME, window=0)


# ----------------------------------------------------------------------------- sequence


def test_sequence_wraps_and_skips_outstanding() -> None:
    pair = bound_pair("transmitter")
    pair.esme._next_sequence = MAX_SEQUENCE - 1
    seqs = [pair.esme.send_request("submit_sm", 0.0, **MESSAGE) for _ in range(3)]
    assert seqs == [MAX_SEQUENCE - 1, MAX_SEQUENCE, 1]
    # Numbers still waiting for a response are never reused.
    pair.esme._next_sequence = MAX_SEQUENCE
    assert pair.esme.send_request("submit_sm", 0.0, **MESSAGE) == 2
    assert all(0 < p.sequence <= MAX_SEQUENCE for p in sent_pdus(pair.esme))


# ------------------------------------------------------- the table, pair by pair (§2.3)


def session_in(role: Role, state: State) -> Session:
    """A session of ``role`` brought to ``state`` by real traffic."""
    if state is State.OPEN:
        return Session(role=role)
    kind: Kind = "transceiver"
    if state in BOUND_STATES:
        kind = next(k for k, s in KIND_STATE.items() if s is state)
    pair = bound_pair(kind)
    session = pair.esme if role is Role.ESME else pair.smsc
    if state is State.UNBOUND:
        # The unbind_resp stays queued: handing it over (data_to_send) would close.
        session.receive_data(wire("unbind", 500), 0.0)
    drain(session)
    return session


STATES = [State.OPEN, State.BOUND_TX, State.BOUND_RX, State.BOUND_TRX]


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("command", REQUESTS)
def test_every_incoming_request_follows_the_table(role: Role, state: State, command: str) -> None:
    session = session_in(role, state)
    assert session.state is state
    session.receive_data(wire(command, 321), 1.0)
    events = drain(session)
    answers = sent_pdus(session)
    if command in may_receive(role, state):
        expected: dict[str, list[type[Event]]] = {
            "enquire_link": [],
            "unbind": [Unbound, ConnectionClosed],  # closed once the resp is handed over
            "outbind": [OutbindReceived],
            "alert_notification": [AlertReceived],
        }
        if command in ("deliver_sm", "submit_sm", "data_sm"):
            expected[command] = [RequestReceived]
        if command.startswith("bind_"):
            expected[command] = [BindRequested]
        events += drain(session)
        assert [type(e) for e in events] == expected[command]
        if command in ("enquire_link", "unbind"):
            [resp] = answers
            assert (resp.command, resp.status) == (f"{command}_resp", pdu.ESME_ROK)
        else:
            assert answers == []
    else:
        [error] = events
        assert isinstance(error, ProtocolError)
        assert not error.fatal
        [resp] = answers
        expected_resp = pdu.response_for(example(command, 321), pdu.ESME_ROK).command
        assert resp.command == expected_resp
        assert resp.sequence == 321
        refused_bind = role is Role.SMSC and command.startswith("bind_") and state in BOUND_STATES
        assert resp.status == (pdu.ESME_RALYBND if refused_bind else pdu.ESME_RINVBNDSTS)
        assert session.state is state


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("command", REQUESTS)
def test_unbound_refuses_every_request(role: Role, command: str) -> None:
    session = session_in(role, State.UNBOUND)
    assert may_receive(role, State.UNBOUND) == frozenset()
    session.receive_data(wire(command, 321), 1.0)
    [error] = drain(session)
    assert isinstance(error, ProtocolError)
    unbind_resp, resp = sent_pdus(session)
    assert unbind_resp.command == "unbind_resp"
    assert (resp.sequence, resp.status) == (321, pdu.ESME_RINVBNDSTS)


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("command", REQUESTS)
def test_every_outgoing_request_follows_the_table(role: Role, state: State, command: str) -> None:
    session = session_in(role, state)
    if command in may_send(role, state):
        session.send_request(command, 1.0, **EXAMPLE_FIELDS[command])
        [sent] = sent_pdus(session)
        assert sent.command == command
    else:
        with pytest.raises(LocalProtocolError):
            session.send_request(command, 1.0, **EXAMPLE_FIELDS[command])
        assert session.data_to_send() == b""


# ----------------------------------------------------------------------------- fuzzing


def check_event_stream(events: list[Event], session: Session) -> None:
    assert all(isinstance(e, Event) for e in events)
    for i, event in enumerate(events):
        if isinstance(event, ConnectionClosed):
            assert i == len(events) - 1, "ConnectionClosed must be the last event"
            assert session.state is State.CLOSED


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


VALID_STREAM = st.lists(st.sampled_from(REQUESTS), max_size=8).map(
    lambda commands: b"".join(wire(c, i + 1) for i, c in enumerate(commands))
)


@st.composite
def mutated_stream(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(VALID_STREAM))
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "drop":
            del data[at]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    role=st.sampled_from(list(Role)),
    kind=st.sampled_from(list(KIND_STATE)),
    data=st.one_of(st.binary(max_size=300), mutated_stream(), VALID_STREAM),
    cuts=st.lists(st.integers(0, 1000), max_size=6),
    eof=st.booleans(),
)
def test_peer_bytes_never_raise(
    role: Role, kind: Kind, data: bytes, cuts: list[int], eof: bool
) -> None:
    pair = bound_pair(kind, max_command_length=512)
    session = pair.esme if role is Role.ESME else pair.smsc
    events: list[Event] = []
    now = 0.0
    for chunk in chunked(data, cuts):
        now += 1.0
        session.receive_data(chunk, now)
        events += drain(session)
        session.data_to_send()
        session.tick(now)
        events += drain(session)
    if eof:
        session.receive_data(b"", now)
    session.tick(now + 1000.0)
    session.data_to_send()
    events += drain(session)
    check_event_stream(events, session)
    if eof:
        assert session.state is State.CLOSED


# --------------------------------------------------------------- stateful: random usage


RESPONSE_STATUSES = st.sampled_from([pdu.ESME_ROK, pdu.ESME_RINVPASWD, pdu.ESME_RX_T_APPN])


class SessionPairMachine(RuleBasedStateMachine):
    """Random legal and illegal local actions, traffic and time on an ESME/SMSC pair."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair(window=2, response_timeout=5.0, enquire_link_interval=7.0)
        self.pending: dict[Role, list[Pdu]] = {Role.ESME: [], Role.SMSC: []}
        self.closed: dict[Role, bool] = {Role.ESME: False, Role.SMSC: False}

    @initialize(kind=st.one_of(st.none(), st.sampled_from(list(KIND_STATE))))
    def start(self, kind: Kind | None) -> None:
        if kind is not None:
            [bound] = self.pair.bind(kind)
            assert isinstance(bound, Bound)

    def side(self, role: Role) -> Session:
        return self.pair.esme if role is Role.ESME else self.pair.smsc

    def record(self, role: Role, events: list[Event]) -> None:
        session = self.side(role)
        assert not (self.closed[role] and events), f"{role.name}: events after close"
        check_event_stream(events, session)
        for event in events:
            if isinstance(event, BindRequested | RequestReceived):
                self.pending[role].append(event.pdu)
            if isinstance(event, Bound):
                assert event.state is session.state
            if isinstance(event, ConnectionClosed):
                self.closed[role] = True

    def collect(self) -> None:
        esme_events, smsc_events = self.pair.flush()
        self.record(Role.ESME, esme_events)
        self.record(Role.SMSC, smsc_events)
        for event in (*esme_events, *smsc_events):
            label(type(event).__name__)  # shown by --hypothesis-show-statistics

    def try_send(self, role: Role, command: str) -> None:
        session = self.side(role)
        legal = command in may_send(role, session.state)
        free = session.window_free
        try:
            session.send_request(command, self.pair.now, **EXAMPLE_FIELDS[command])
        except WindowFull:
            assert legal
            assert free == 0
            assert command not in ("enquire_link", "unbind")
        except LocalProtocolError:
            # Legal by the table but refused: only while a bind or our unbind is out.
            assert not legal or session._bind_pending or session._unbinding
        else:
            assert legal

    @rule(kind=st.sampled_from(list(KIND_STATE)))
    def bind(self, kind: Kind) -> None:
        session = self.pair.esme
        try:
            session.send_bind(kind, self.pair.now, system_id="esme", password="pw")
        except LocalProtocolError:
            assert session.state is not State.OPEN or session._bind_pending
        self.collect()

    @rule(role=st.sampled_from(list(Role)), command=st.sampled_from(REQUESTS))
    def send(self, role: Role, command: str) -> None:
        self.try_send(role, command)

    @rule(
        role=st.sampled_from(list(Role)),
        command=st.sampled_from(["submit_sm", "deliver_sm", "data_sm"]),
    )
    def send_message(self, role: Role, command: str) -> None:
        # Message traffic, legal or not for this bind, far more often than link management.
        self.try_send(role, command)
        self.collect()

    @precondition(lambda self: any(self.pending.values()))
    @rule(data=st.data(), status=RESPONSE_STATUSES)
    def respond(self, data: st.DataObject, status: int) -> None:
        role = data.draw(st.sampled_from([r for r in Role if self.pending[r]]))
        request = data.draw(st.sampled_from(self.pending[role]))
        self.pending[role].remove(request)
        fields = {"system_id": "smsc"} if request.command.startswith("bind_") else {}
        self.side(role).respond(request, status, **fields)
        with pytest.raises(LocalProtocolError):
            self.side(role).respond(request, status, **fields)

    @rule()
    def shuttle(self) -> None:
        self.collect()
        esme, smsc = self.pair.esme, self.pair.smsc
        if esme.state in BOUND_STATES and smsc.state in BOUND_STATES:
            assert esme.state is smsc.state

    @rule(dt=st.sampled_from([0.5, 3.0, 5.0, 7.0, 20.0]))
    def advance(self, dt: float) -> None:
        self.pair.now += dt
        self.pair.esme.tick(self.pair.now)
        self.pair.smsc.tick(self.pair.now)
        self.collect()

    @rule(role=st.sampled_from(list(Role)), how=st.sampled_from(["eof", "close"]))
    def hang_up(self, role: Role, how: str) -> None:
        # One rule for both ends of the session, so that most runs get far past the bind.
        session = self.side(role)
        if how == "eof":
            session.receive_data(b"", self.pair.now)
        else:
            session.close()
        self.record(role, drain(session))
        assert session.state is State.CLOSED

    @invariant()
    def counters_are_sane(self) -> None:
        for role in Role:
            session = self.side(role)
            assert 0 <= session.window_free <= session.window
            assert session.pending_incoming >= 0
            if session.state is State.CLOSED:
                assert session.next_deadline() is None
            elif session.state in BOUND_STATES:
                assert session.next_deadline() is not None  # keep-alive always armed


SessionPairMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, derandomize=True
)
test_session_pair_machine = SessionPairMachine.TestCase
