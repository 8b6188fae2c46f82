"""payloads: default bodies, placeholders, escaping where values land, auth headers."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import urllib.parse
from typing import Any

import attrs
import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gatewayd
from gatewayd import config, payloads
from gatewayd.config import BasicAuth, BearerAuth, JwtAuth, UrlDestination
from gatewayd.events import Address, DeliveryReceipt, MessageClass, MoMessage, ReceiptStatus

SECRET = "a-jwt-secret-that-is-long-enough-for-hs256!"
NOW = 1_760_000_000.0
WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

HOSTILE = [
    "a&b=c",
    'quote " and \\ backslash',
    "hash # and ? and /",
    "line\nbreak\r\nand\ttab",
    "{{id}} braces {{ text }}",
    "ünïcödé € 中文",
    "emoji 😀👍🏽",
    "percent %20 %zz +plus+",
    "",
]


def make_mo(text: str = "Hello", **kwargs: Any) -> MoMessage:
    fields: dict[str, Any] = {
        "id": "0190f1c2-0000-7000-8000-000000000001",
        "carrier": "acme",
        "source": Address(addr="447700900123", ton=1, npi=1),
        "destination": Address(addr="12345678"),
        "text": text,
        "raw": text.encode("utf-8", "surrogatepass"),
        "data_coding": 8,
        "parts": 2,
        "keyword": "HELLO",
        "message_class": MessageClass.A2P,
        "received_at": WHEN,
    }
    fields.update(kwargs)
    return MoMessage(**fields)


def make_dlr(**kwargs: Any) -> DeliveryReceipt:
    fields: dict[str, Any] = {
        "id": "0190f1c2-0000-7000-8000-000000000002",
        "carrier": "acme",
        "message_id": "abc123",
        "normalized_message_id": "abc123",
        "status": ReceiptStatus.DELIVRD,
        "error": "000",
        "submit_date": WHEN - dt.timedelta(minutes=1),
        "done_date": WHEN,
        "source": Address(addr="447700900123"),
        "destination": Address(addr="12345678"),
        "received_at": WHEN,
    }
    fields.update(kwargs)
    return DeliveryReceipt(**fields)


def dest(**kwargs: Any) -> UrlDestination:
    fields: dict[str, Any] = {"name": "crm", "url": "https://crm.example.com/in"}
    fields.update(kwargs)
    return UrlDestination(**fields)


# --- default bodies and placeholder values ------------------------------------------------


def test_default_json_mo_is_exactly_the_issue_4_body() -> None:
    assert payloads.default_json(make_mo()) == {
        "id": "0190f1c2-0000-7000-8000-000000000001",
        "type": "mo",
        "class": "a2p",
        "carrier": "acme",
        "from": "447700900123",
        "to": "12345678",
        "text": "Hello",
        "keyword": "HELLO",
        "parts": 2,
        "data_coding": 8,
        "received_at": "2026-01-02T03:04:05Z",
    }


def test_default_json_dlr_is_exactly_the_issue_4_body() -> None:
    assert payloads.default_json(make_dlr()) == {
        "id": "0190f1c2-0000-7000-8000-000000000002",
        "type": "dlr",
        "carrier": "acme",
        "message_id": "abc123",
        "status": "DELIVRD",
        "error": "000",
        "from": "447700900123",
        "to": "12345678",
        "submit_date": "2026-01-02T03:03:05Z",
        "done_date": "2026-01-02T03:04:05Z",
        "received_at": "2026-01-02T03:04:05Z",
    }


def test_default_json_missing_dates_are_null_and_extra_is_added() -> None:
    body = payloads.default_json(
        make_dlr(submit_date=None, done_date=None), {"custom": "t-1", "units": "2"}
    )
    assert body["submit_date"] is None
    assert body["done_date"] is None
    assert body["custom"] == "t-1"
    assert body["units"] == 2  # a number in JSON, as seed 003 shows it


def test_default_json_echoes_custom_objects_as_json() -> None:
    body = payloads.default_json(make_dlr(), {"custom": '{"order":"A-1"}', "part": "3"})
    assert body["custom"] == {"order": "A-1"}
    assert body["part"] == 3
    odd = payloads.default_json(make_dlr(), {"custom": "{not json", "units": "x"})
    assert (odd["custom"], odd["units"]) == ("{not json", "x")


def test_dates_are_converted_to_utc() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    mo = make_mo(received_at=dt.datetime(2026, 1, 2, 5, 4, 5, 250000, tzinfo=plus2))
    assert payloads.placeholders(mo)["received_at"] == "2026-01-02T03:04:05.250000Z"


def test_default_keys_match_the_documented_sets() -> None:
    assert set(payloads.default_json(make_mo())) == payloads.MO_PLACEHOLDERS
    assert set(payloads.default_json(make_dlr())) == payloads.DLR_PLACEHOLDERS


@pytest.mark.parametrize("event", [make_mo(), make_dlr()], ids=["mo", "dlr"])
def test_every_configurable_placeholder_has_a_value_for_every_event(event: Any) -> None:
    # config validates templates against the union, so any event must render any of them
    values = payloads.placeholders(event)
    assert set(config.MO_FIELDS) <= set(values)
    assert set(config.DLR_FIELDS) <= set(values)
    assert set(config.PLACEHOLDERS) <= set(values)
    assert all(isinstance(v, str) for v in values.values())


def test_placeholders_mo_and_dlr_values() -> None:
    mo = payloads.placeholders(make_mo())
    assert mo["parts"] == "2"
    assert mo["class"] == "a2p"
    assert mo["message_id"] == ""
    dlr = payloads.placeholders(make_dlr(done_date=None), {"custom": "ticket-9"})
    assert dlr["status"] == "DELIVRD"
    assert dlr["done_date"] == ""
    assert dlr["keyword"] == ""
    assert dlr["mobile"] == "447700900123"
    assert dlr["custom"] == "ticket-9"


def test_lone_surrogates_are_replaced_so_bodies_stay_valid_utf8() -> None:
    mo = make_mo(text="bad \ud83d end, good \U0001f600")
    text = payloads.placeholders(mo)["text"]
    assert text == "bad \ufffd end, good \U0001f600"
    request = payloads.build_request(dest(), mo, now=NOW)
    assert json.loads(request.body.decode("utf-8"))["text"] == text


# --- templates ----------------------------------------------------------------------------


def test_template_names() -> None:
    url = "https://x/y?id={{id}}&s={{ status }}&m={{message_id}}&bad={{1x}}&{single}"
    assert payloads.template_names(url) == {"id", "status", "message_id"}


def test_unknown_placeholder_raises() -> None:
    with pytest.raises(payloads.UnknownPlaceholder) as info:
        payloads.render_url("https://x/?a={{nope}}", {"id": "1"})
    assert info.value.args == ("nope",)
    with pytest.raises(KeyError):
        payloads.render_fields({"a": "{{nope}}"}, {})


def test_rendering_is_one_pass() -> None:
    values = {"text": "{{id}}", "id": "secret-id"}
    assert payloads.render("t={{text}}", values) == "t={{id}}"
    assert payloads.render_url("https://x/?t={{text}}", values) == ("https://x/?t=%7B%7Bid%7D%7D")


@pytest.mark.parametrize("value", HOSTILE)
def test_url_values_cannot_break_out(value: str) -> None:
    url = payloads.render_url(
        "https://h.example/p/{{text}}?msg={{text}}&fixed=1#frag", {"text": value}
    )
    parts = urllib.parse.urlsplit(url)
    assert parts.netloc == "h.example"
    assert parts.fragment == "frag"
    assert urllib.parse.unquote(parts.path) == f"/p/{value}"
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    assert query == {"msg": [value], "fixed": ["1"]}


@given(st.text())
def test_url_escaping_round_trips_any_text(value: str) -> None:
    url = payloads.render_url("https://h/?a={{text}}&b={{text}}", {"text": value})
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query, keep_blank_values=True)
    assert query == {"a": [value], "b": [value]}
    assert not {"\n", " ", "#"} & set(url)


@given(st.text(), st.sampled_from(["json", "form", "get"]))
def test_body_escaping_round_trips_any_text(value: str, how: str) -> None:
    mo = make_mo(text=value, keyword=value)
    method = "GET" if how == "get" else "POST"
    fmt = "form" if how == "form" else "json"
    d = dest(method=method, format=fmt, body={"msg": "{{text}}", "both": "{{keyword}}|{{id}}"})
    request = payloads.build_request(d, mo, now=NOW)
    if how == "json":
        received = json.loads(request.body)
    else:
        raw = urllib.parse.urlsplit(request.url).query if how == "get" else request.body.decode()
        received = {k: v[0] for k, v in urllib.parse.parse_qs(raw, True).items()}
    assert received == {"msg": value, "both": f"{value}|{mo.id}"}


# --- requests -----------------------------------------------------------------------------


def test_default_post_is_json_with_idempotency_key_and_user_agent() -> None:
    request = payloads.build_request(dest(), make_mo(), now=NOW)
    assert request.method == "POST"
    assert request.url == "https://crm.example.com/in"
    assert json.loads(request.body) == payloads.default_json(make_mo())
    assert request.header("content-type") == "application/json"
    assert request.header("Idempotency-Key") == make_mo().id
    assert request.header("user-agent") == f"gatewayd/{gatewayd.__version__}"
    assert request.header("authorization") is None


def test_form_body() -> None:
    d = dest(format="form", body={"to": "{{to}}", "msg": "{{text}}"})
    request = payloads.build_request(d, make_mo(text="a&b=c d"), now=NOW)
    assert request.header("content-type") == "application/x-www-form-urlencoded"
    assert request.body == b"to=12345678&msg=a%26b%3Dc%20d"


def test_get_merges_fields_into_the_existing_query_and_sends_no_body() -> None:
    d = dest(method="GET", url="https://h.example/in?key=k1&id={{id}}", body={"m": "{{text}}"})
    request = payloads.build_request(d, make_mo(text="x y"), now=NOW)
    assert request.body == b""
    assert request.header("content-type") is None
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)
    assert query == {"key": ["k1"], "id": [make_mo().id], "m": ["x y"]}


def test_get_with_the_default_body_sends_every_default_field() -> None:
    request = payloads.build_request(dest(method="GET"), make_dlr(done_date=None), now=NOW)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query, True)
    assert query["status"] == ["DELIVRD"]
    assert query["done_date"] == [""]
    assert set(query) == payloads.DLR_PLACEHOLDERS


def test_configured_headers_are_sent_and_override_defaults() -> None:
    d = dest(headers={"X-Api-Key": "k-123", "user-agent": "custom/1"})
    request = payloads.build_request(d, make_mo(), now=NOW)
    assert request.header("x-api-key") == "k-123"
    assert request.header("User-Agent") == "custom/1"
    assert [k.lower() for k, _ in request.headers].count("user-agent") == 1
    assert ("X-Api-Key", "<redacted>") in request.redacted_headers()


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-A", "a\r\nInjected: 1"), ("X-A", "a\nb"), ("X-A", "nul\x00"), ("Bad Name", "v")],
)
def test_header_injection_is_rejected(name: str, value: str) -> None:
    with pytest.raises(payloads.HeaderError):
        payloads.build_request(dest(headers={name: value}), make_mo(), now=NOW)


def test_basic_auth() -> None:
    d = dest(auth=BasicAuth(username="user", password="pä:ss"))
    request = payloads.build_request(d, make_mo(), now=NOW)
    value = request.header("authorization")
    assert value is not None
    assert value.startswith("Basic ")
    assert base64.b64decode(value[6:]).decode() == "user:pä:ss"
    assert request.redacted_headers()[-1] == ("Authorization", "<redacted>")


def test_bearer_auth_replaces_a_configured_authorization_header() -> None:
    d = dest(auth=BearerAuth(token="tok-1"), headers={"Authorization": "Token old"})
    request = payloads.build_request(d, make_mo(), now=NOW)
    assert [v for k, v in request.headers if k.lower() == "authorization"] == ["Bearer tok-1"]


def test_bearer_token_with_newline_is_rejected() -> None:
    d = dest(auth=BearerAuth(token="tok\r\nX-Evil: 1"))
    with pytest.raises(payloads.HeaderError):
        payloads.build_request(d, make_mo(), now=NOW)


@pytest.mark.parametrize("method", ["POST", "GET", "PATCH"])
def test_jwt_claims_and_body_hash(method: str) -> None:
    d = dest(method=method, auth=JwtAuth(secret=SECRET))
    request = payloads.build_request(d, make_dlr(), now=NOW)
    value = request.header("authorization")
    assert value is not None
    assert value.startswith("Bearer ")
    claims = jwt.decode(
        value[7:], SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims == {
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": make_dlr().id,
        "body_sha256": hashlib.sha256(request.body).hexdigest(),
    }
    if method == "GET":
        assert claims["body_sha256"] == hashlib.sha256(b"").hexdigest()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(value[7:], "another-secret-of-sufficient-length!!", algorithms=["HS256"])


def test_jwt_with_a_short_secret_does_not_warn() -> None:
    # filterwarnings=error: PyJWT's InsecureKeyLengthWarning would fail this test
    request = payloads.build_request(dest(auth=JwtAuth(secret="short")), make_mo(), now=NOW)
    assert request.header("authorization") is not None


def test_extra_values_reach_templates() -> None:
    d = dest(url="https://h/s?c={{custom}}&u={{units}}", body={"c": "{{custom}}"})
    request = payloads.build_request(d, make_dlr(), {"custom": "a&b", "units": "3"}, now=NOW)
    assert request.url == "https://h/s?c=a%26b&u=3"
    assert json.loads(request.body) == {"c": "a&b"}


def test_sample_events() -> None:
    mo = payloads.sample_event("mo", now=WHEN)
    dlr = payloads.sample_event("dlr", now=WHEN)
    assert isinstance(mo, MoMessage)
    assert isinstance(dlr, DeliveryReceipt)
    assert payloads.default_json(dlr)["done_date"] == "2026-01-02T03:04:05Z"


def test_prepared_request_is_frozen() -> None:
    request = payloads.build_request(dest(), make_mo(), now=NOW)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        request.url = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(0))),  # not dt.UTC
        dt.datetime(2026, 1, 2, 3, 4, 5),  # naive: local time, as astimezone reads it
    ],
)
def test_iso_utc_is_the_astimezone_form(value: dt.datetime) -> None:
    expected = value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    assert payloads.iso_utc(value) == expected


@given(st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.none(), st.floats())))
def test_json_bytes_is_compact_dumps(value: dict[str, Any]) -> None:
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert payloads.json_bytes(value) == expected


@pytest.mark.parametrize("extra", [None, {"units": "2", "custom": '{"a": 1}'}])
@pytest.mark.parametrize("event", [make_mo(), make_dlr()])
def test_a_url_without_placeholders_skips_rendering_with_the_same_result(
    event: Any, extra: dict[str, str] | None
) -> None:
    # The reference: what build_request did before, rendering the URL from every value.
    config = dest(url="https://h.example/in?a=%7B%7Bx%7D%7D", headers={"X-K": "v"})
    values = payloads.placeholders(event, extra)
    expected = payloads.compose(
        method=config.method,
        url=payloads.render_url(config.url, values),
        format=config.format,
        fields=payloads.default_json(event, extra),
        event_id=event.id,
        headers=config.headers,
        auth=config.auth,
        now=1.0,
    )
    assert payloads.build_request(config, event, extra, now=1.0) == expected
