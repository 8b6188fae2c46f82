"""The YAML config contract: records, every problem with its line and key path, secrets."""

from __future__ import annotations

import io
import ipaddress
import json
import textwrap
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from gatewayd import config as cf

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_ENV = {"ACME_PASSWORD": "pw", "CRM_SECRET": "jwt-secret-1", "LEGACY_KEY": "legacy-k"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[cf.Problem]:
    path = write(tmp_path, text)
    with pytest.raises(cf.ConfigError) as info:
        cf.load_config(path, env=env or {})
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return info.value.problems


def where(found: list[cf.Problem]) -> set[tuple[int, str]]:
    return {(p.line, p.key_path) for p in found}


MINIMAL = """
carriers:
  acme: {host: smsc.example.com, system_id: gw}
destinations:
  crm: {type: url, url: "https://crm.example.com/in"}
"""


# --- valid files ----------------------------------------------------------------------


def test_example_config_loads_into_records() -> None:
    config = cf.load_config(ROOT / "config" / "example.yaml", env=EXAMPLE_ENV)
    assert config.store == ROOT / "config" / "gatewayd.db"
    assert config.classify.a2p_max_digits == 8
    acme = config.carriers["acme"]
    assert acme == cf.CarrierConfig(
        name="acme",
        host="127.0.0.1",
        port=2775,
        system_id="gw",
        password="pw",
        bind="transceiver",
        sessions=1,
        window=10,
        enquire_link=30.0,
        tls=False,
    )
    crm = config.destinations["crm"]
    assert isinstance(crm, cf.UrlDestination)
    assert crm.auth == cf.JwtAuth(secret="jwt-secret-1")
    assert crm.success == frozenset({200, 202})
    assert crm.retry == cf.RetryPolicy(attempts=4, interval=1800.0, backoff="fixed")
    assert crm.timeout == 10.0
    status = config.destinations["crm-status"]
    assert isinstance(status, cf.UrlDestination)
    assert status.method == "PATCH"
    assert status.url.endswith("?id={{message_id}}&status={{status}}")
    legacy = config.destinations["legacy"]
    assert isinstance(legacy, cf.UrlDestination)
    assert legacy.format == "form"
    assert dict(legacy.body or {}) == {
        "to": "{{to}}",
        "from": "{{from}}",
        "msg": "{{text}}",
        "uid": "{{id}}",
    }
    assert dict(legacy.headers) == {"X-Api-Key": "legacy-k"}
    assert config.destinations["drop"] == cf.NoneDestination(name="drop")
    number = config.numbers["12345678"]
    assert number.incoming == ("crm",)
    assert number.delivery == ("crm-status",)
    assert dict(number.keywords) == {"STOP": ("crm", "legacy")}
    assert config.routes == cf.RoutesConfig(a2p=("crm",), p2p=("drop",), delivery=("crm-status",))
    # defaults
    assert config.api.listen == "127.0.0.1:8025"
    assert config.retention == cf.RetentionConfig(delivered=30 * 86400.0, dead=90 * 86400.0)
    assert (config.reassembly_timeout, config.drain_grace, config.dedup_window) == (
        300.0,
        30.0,
        600.0,
    )
    assert config.synchronous == "FULL"
    assert config.relaxed_records is True


def test_every_key_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        store: /var/lib/gatewayd/gw.db
        synchronous: normal
        relaxed_records: false
        classify: {a2p_max_digits: 6}
        reassembly_timeout: 2m
        drain_grace: 10
        dedup_window: 1d
        retention: {delivered: 7d, dead: 60d}
        carriers:
          acme:
            host: smsc.example.com
            port: 3775
            system_id: "0123"
            password: secret1
            system_type: VMA
            address_range: "^1234"
            bind: receiver
            sessions: 2
            window: 50
            enquire_link: 45s
            response_timeout: 500ms
            reconnect: {min: 2s, max: 5m}
            tls: true
            tls_verify: false
            tls_ca: certs/ca.pem
            throughput: 3000/m
            temp_error_status: "0x58"
            charset: latin1
            max_command_length: 7424
          beta: {host: b.example.com, system_id: b, bind: transmitter, temp_error_status: 0x14}
        smtp: {host: smtp.example.com, port: 587, starttls: true, username: u,
               password: smtp-pw, from: sms@example.com}
        api:
          listen: "[::1]:9000"
          tokens: [tok-1, tok-2]
          admin_tokens: adm-1
          status_url_allow: [10.0.0.0/8, "fd00::/8"]
        destinations:
          mail:
            type: email
            to: [a@example.com, b@example.com]
            subject: "SMS {{from}}"
            body: "{{text}} at {{received_at}}"
            smtp: {host: backup.example.com}
            retry: {attempts: 5, interval: 1m, backoff: exponential, max: 2h}
            concurrency: 3
          mail2: {type: email, to: c@example.com}
          relay: {type: forward, to: "{{to}}", carrier: beta, from: "Acme",
                  prefix: "From {{from}}: "}
          desk:
            type: device
            uri: sip:desk@pbx.example.com
            proxy: pbx.example.com:5060
            transport: tcp
            username: desk
            password: sip-pw
          hook:
            type: url
            url: https://h.example.com/x
            method: get
            auth: {basic: {username: user, password: basic-pw}}
            success: 204
          bearer: {type: url, url: "http://h.example.com:8080/y", auth: {bearer: bt-1}}
        numbers:
          +4412345: {incoming: [mail, desk, mail], delivery: hook, keywords: {stop: relay}}
          0123: {incoming: relay}
        routes: {p2p: [relay]}
        """,
    )
    config = cf.load_config(path, env={})
    assert config.file == path
    assert config.store == Path("/var/lib/gatewayd/gw.db")
    assert config.synchronous == "NORMAL"
    assert config.relaxed_records is False
    assert config.classify.a2p_max_digits == 6
    assert (config.reassembly_timeout, config.drain_grace, config.dedup_window) == (
        120.0,
        10.0,
        86400.0,
    )
    assert config.retention == cf.RetentionConfig(delivered=7 * 86400.0, dead=60 * 86400.0)
    acme = config.carriers["acme"]
    assert acme.system_id == "0123"  # not the octal int 83
    assert acme.bind == "receiver"
    assert (acme.sessions, acme.window, acme.enquire_link, acme.response_timeout) == (
        2,
        50,
        45.0,
        0.5,
    )
    assert (acme.reconnect_min, acme.reconnect_max) == (2.0, 300.0)
    assert acme.tls
    assert not acme.tls_verify
    assert acme.tls_ca == tmp_path / "certs" / "ca.pem"
    assert acme.throughput == 50.0
    assert acme.temp_error_status == 0x58
    assert acme.charset == "latin1"
    assert acme.max_command_length == 7424
    assert config.carriers["beta"].temp_error_status == 0x14
    smtp = cf.SmtpConfig(
        host="smtp.example.com",
        port=587,
        starttls=True,
        username="u",
        password="smtp-pw",
        from_="sms@example.com",
    )
    assert config.smtp == smtp
    assert config.api.host == "::1"
    assert config.api.port == 9000
    assert config.api.listen == "[::1]:9000"
    assert config.api.tokens == ("tok-1", "tok-2")
    assert config.api.admin_tokens == ("adm-1",)
    assert config.api.status_url_allow == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    mail = config.destinations["mail"]
    assert isinstance(mail, cf.EmailDestination)
    assert mail.to == ("a@example.com", "b@example.com")
    assert mail.subject == "SMS {{from}}"
    assert mail.smtp is not None
    assert mail.smtp.host == "backup.example.com"  # overridden
    assert mail.smtp.password == "smtp-pw"  # inherited
    assert mail.retry == cf.RetryPolicy(
        attempts=5, interval=60.0, backoff="exponential", max=7200.0
    )
    assert mail.concurrency == 3
    mail2 = config.destinations["mail2"]
    assert isinstance(mail2, cf.EmailDestination)
    assert mail2.to == ("c@example.com",)
    assert mail2.smtp == smtp
    assert mail2.body == "{{text}}"
    assert config.destinations["relay"] == cf.ForwardDestination(
        name="relay", to="{{to}}", carrier="beta", from_="Acme", prefix="From {{from}}: "
    )
    assert config.destinations["desk"] == cf.DeviceDestination(
        name="desk",
        uri="sip:desk@pbx.example.com",
        proxy="pbx.example.com:5060",
        transport="tcp",
        username="desk",
        password="sip-pw",
    )
    hook = config.destinations["hook"]
    assert isinstance(hook, cf.UrlDestination)
    assert hook.method == "GET"
    assert hook.auth == cf.BasicAuth(username="user", password="basic-pw")
    assert hook.success == frozenset({204})
    bearer = config.destinations["bearer"]
    assert isinstance(bearer, cf.UrlDestination)
    assert bearer.auth == cf.BearerAuth(token="bt-1")
    assert config.numbers["+4412345"].incoming == ("mail", "desk", "mail")
    assert dict(config.numbers["+4412345"].keywords) == {"STOP": ("relay",)}
    assert "0123" in config.numbers
    assert config.routes == cf.RoutesConfig(p2p=("relay",))


def test_minimal_config_and_defaults(tmp_path: Path) -> None:
    config = cf.load_config(write(tmp_path, MINIMAL), env={})
    assert config.store == tmp_path / "gatewayd.db"
    acme = config.carriers["acme"]
    assert (acme.port, acme.password, acme.bind, acme.temp_error_status) == (
        2775,
        "",
        "transceiver",
        0x64,
    )
    assert acme.charset == "gsm"
    assert acme.max_command_length == 65536
    assert acme.throughput is None
    crm = config.destinations["crm"]
    assert isinstance(crm, cf.UrlDestination)
    assert crm.retry == cf.RetryPolicy(attempts=3, interval=1800.0)  # 3 retries, 30 min apart
    assert crm.success is None
    assert config.routes == cf.RoutesConfig()
    assert config.smtp is None


def test_merge_keys_share_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        carriers:
          a: &base {host: smsc.example.com, system_id: gw, window: 20}
          b:
            <<: *base
            window: 5
        """,
    )
    config = cf.load_config(path, env={})
    assert config.carriers["a"].window == 20
    assert config.carriers["b"].window == 5
    assert config.carriers["b"].host == "smsc.example.com"


def test_config_is_immutable(tmp_path: Path) -> None:
    config = cf.load_config(write(tmp_path, MINIMAL), env={})
    with pytest.raises(TypeError):
        config.carriers["x"] = config.carriers["acme"]  # type: ignore[index]


# --- many problems at once --------------------------------------------------------------

MANY_MISTAKES = """
store: ./gw.db
carriers:
  acme:
    host: 127.0.0.1
    port: 99999
    system_id: gw
    enquirelink: 30s
    bind: transciever
    password: ${ACME_PASSWORD}
  rx: {host: r.example.com, system_id: r, bind: receiver}
destinations:
  crm:
    type: url
    url: ftp://crm.example.com/in
    timeout: 10x
    retry: {attempts: 4, interval: 30 minutes}
    success: [200, 999]
  tpl:
    type: url
    url: https://x.example.com/?m={{txet}}
    body: {a: "{{mesage_id}}", b: "{{ok"}
  fwd: {type: forward, to: "{{to}}", carrier: acm}
  fwd2: {type: forward, to: "{{to}}", carrier: rx}
  bad: {type: webhook}
  mail: {type: email, to: nobody}
numbers:
  "1234": {incoming: crn}
  "+1234": {incoming: crm}
  "5678":
    incoming: [crm, nope]
    keywords:
      STOP: crm
      stop: tpl
    delivery: crm
    deliver: crm
routes:
  a2p: crm
  p2p: drop
"""


def test_many_mistakes_all_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, MANY_MISTAKES)
    expected = {
        (5, "carriers.acme.port"),
        (7, "carriers.acme.enquirelink"),
        (8, "carriers.acme.bind"),
        (9, "carriers.acme.password"),
        (14, "destinations.crm.url"),
        (15, "destinations.crm.timeout"),
        (16, "destinations.crm.retry.interval"),
        (17, "destinations.crm.success[1]"),
        (20, "destinations.tpl.url"),
        (21, "destinations.tpl.body.a"),
        (21, "destinations.tpl.body.b"),
        (22, "destinations.fwd.carrier"),
        (23, "destinations.fwd2.carrier"),
        (24, "destinations.bad.type"),
        (25, "destinations.mail.to"),
        (25, "destinations.mail"),  # no smtp settings
        (27, "numbers.1234.incoming"),
        (28, "numbers.+1234"),
        (30, "numbers.5678.incoming[1]"),
        (33, "numbers.5678.keywords.stop"),
        (35, "numbers.5678.deliver"),
        (38, "routes.p2p"),
    }
    assert where(found) == expected
    assert [p.line for p in found] == sorted(p.line for p in found)
    assert all(p.file.endswith("gw.yaml") for p in found)
    text = "\n".join(str(p) for p in found)
    assert f"{tmp_path / 'gw.yaml'}:16: destinations.crm.retry.interval: bad duration" in text
    by_path = {p.key_path: p.message for p in found}
    assert by_path["carriers.acme.port"] == "must be 1..65535"
    assert 'did you mean "enquire_link"' in by_path["carriers.acme.enquirelink"]
    assert 'did you mean "transceiver"' in by_path["carriers.acme.bind"]
    assert by_path["carriers.acme.password"] == "environment variable ACME_PASSWORD is not set"
    assert "http" in by_path["destinations.crm.url"]
    assert '"10x"' in by_path["destinations.crm.timeout"]
    assert "unknown placeholder {{txet}}" in by_path["destinations.tpl.url"]
    assert 'did you mean "text"' in by_path["destinations.tpl.url"]
    assert 'did you mean "message_id"' in by_path["destinations.tpl.body.a"]
    assert "malformed placeholder" in by_path["destinations.tpl.body.b"]
    assert by_path["destinations.fwd.carrier"] == 'unknown carrier "acm" (did you mean "acme"?)'
    assert "receiver" in by_path["destinations.fwd2.carrier"]
    assert "url | email | forward | device | none" in by_path["destinations.bad.type"]
    assert "smtp" in by_path["destinations.mail"]
    assert by_path["numbers.1234.incoming"] == 'unknown destination "crn" (did you mean "crm"?)'
    assert 'same as "1234" on line 27' in by_path["numbers.+1234"]
    assert 'same as "STOP" on line 32' in by_path["numbers.5678.keywords.stop"]
    assert 'did you mean "delivery"' in by_path["numbers.5678.deliver"]
    assert by_path["routes.p2p"] == 'unknown destination "drop"'


def test_check_main_prints_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, MANY_MISTAKES)
    out = io.StringIO()
    assert cf.check_main(str(path), out, env={}) == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 22
    assert lines[0] == f"{path}:5: carriers.acme.port: must be 1..65535"


def test_check_main_ok_summary() -> None:
    out = io.StringIO()
    assert cf.check_main(str(ROOT / "config" / "example.yaml"), out, env=EXAMPLE_ENV) == 0
    assert out.getvalue() == "OK: 1 carrier, 4 destinations, 1 number, routes a2p/p2p/delivery\n"


def test_check_main_missing_file(tmp_path: Path) -> None:
    out = io.StringIO()
    assert cf.check_main(str(tmp_path / "nope.yaml"), out, env={}) == 1
    assert "cannot read" in out.getvalue()


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("carriers:\n  acme: {host: x\nroutes: {}\n", 3, "YAML syntax error"),
        ("a: 1\n b: 2\n", 2, "YAML syntax error"),
        ("routes:\n\ta2p: x\n", 2, "YAML syntax error"),
        ("", 0, "empty"),
        ("- 1\n- 2\n", 1, "must be a mapping"),
        ("---\na: 1\n---\nb: 2\n", 3, "YAML syntax error"),
    ],
)
def test_syntax_and_shape_errors(tmp_path: Path, text: str, line: int, needle: str) -> None:
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].line == line
    assert needle in found[0].message


def test_duplicate_and_unknown_keys(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        carriers:
          acme: {host: a, system_id: gw}
          acme: {host: b, system_id: gw}
        destinatons: {}
        """,
    )
    assert where(found) == {(3, "carriers.acme"), (4, "destinatons")}
    assert "duplicate key (first on line 2)" in found[0].message
    assert 'did you mean "destinations"' in found[1].message


def test_required_keys_and_types(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        carriers:
          acme: {port: "x", tls: maybe, window: [1]}
        destinations:
          a: {type: url}
          b: {url: "https://x.example.com"}
          c: {type: forward, to: "12ab", carrier: acme}
          d: {type: device, uri: "desk@pbx"}
          e: {type: url, url: "https://x.example.com", auth: {basic: {username: u}}}
          f: {type: url, url: "https://x.example.com", auth: {bearer: t, jwt: {secret: s}}}
          g: {type: none, url: "https://x.example.com"}
        numbers:
          "12ab": {incoming: a}
          "99": {keywords: {"two words": a}}
        routes: [a]
        """,
    )
    by_path = {p.key_path: p.message for p in found}
    assert by_path["carriers.acme.host"] == "is required"
    assert by_path["carriers.acme.system_id"] == "is required"
    assert by_path["carriers.acme.port"].startswith("must be an integer")
    assert by_path["carriers.acme.tls"] == "must be true or false"
    assert by_path["carriers.acme.window"] == "must be an integer"
    assert by_path["destinations.a.url"] == "is required"
    assert by_path["destinations.b.type"].startswith("is required")
    assert by_path["destinations.c.to"] == "must be a phone number or a template"
    assert by_path["destinations.d.uri"].startswith("must be a SIP URI")
    assert by_path["destinations.e.auth.basic.password"] == "is required"
    assert "exactly one" in by_path["destinations.f.auth"]
    assert by_path["destinations.g.url"] == "unknown key"
    assert by_path["numbers.12ab"].startswith("must be digits")
    assert by_path["numbers.99.keywords.two words"] == "a keyword is one word"
    assert by_path["routes"] == "must be a mapping"
    assert all(p.line > 0 for p in found)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ftp://x.example.com/", "http"),
        ("https:///path", "no host"),
        ("https://{{carrier}}.example.com/", "not allowed in the scheme, host"),
        ("https://x.example.com/a b", "spaces"),
        ("x.example.com/path", "http"),
        ("https://x.example.com:99999/", "not a valid URL"),
    ],
)
def test_bad_urls(tmp_path: Path, url: str, needle: str) -> None:
    found = problems(tmp_path, f'destinations:\n  d: {{type: url, url: "{url}"}}\n')
    assert [(p.line, p.key_path) for p in found] == [(2, "destinations.d.url")]
    assert needle in found[0].message


def test_headers_reject_crlf_and_bad_names(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        destinations:
          d:
            type: url
            url: https://x.example.com/
            headers:
              X-Ok: fine
              X-Evil: "a\\r\\nInjected: yes"
              "Bad Name": x
              X-Env: ${EVIL}
        """,
        env={"EVIL": "v\nX-Injected: 1"},
    )
    assert where(found) == {
        (7, "destinations.d.headers.X-Evil"),
        (8, "destinations.d.headers.Bad Name"),
        (9, "destinations.d.headers.X-Env"),
    }
    assert "CR, LF" in found[0].message


def test_placeholders_known_and_shared() -> None:
    assert {"id", "class", "keyword", "parts", "data_coding"} <= cf.MO_FIELDS
    assert {"message_id", "status", "submit_date", "custom", "units", "mobile"} <= cf.DLR_FIELDS
    assert cf.MO_FIELDS | cf.DLR_FIELDS == cf.PLACEHOLDERS
    assert cf.placeholders("a {{to}} b {{ from }} {{to}}") == ("to", "from")


def test_dlr_and_mo_placeholders_both_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        destinations:
          d:
            type: url
            url: "https://x.example.com/?s={{status}}&k={{keyword}}&c={{custom_ticket}}"
        """,
    )
    assert cf.load_config(path, env={}).destinations["d"].name == "d"


# --- environment ------------------------------------------------------------------------


def test_env_expansion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        carriers:
          acme:
            host: ${HOST}
            port: ${PORT}
            tls: ${TLS}
            system_id: "gw-${SUFFIX}"
            system_type: "$${lit}"
            address_range: '${SUFFIX}'
        """,
    )
    config = cf.load_config(path, env={"HOST": "h.example.com", "PORT": "2776", "TLS": "true",
                                       "SUFFIX": "x"})  # fmt: skip
    acme = config.carriers["acme"]
    assert (acme.host, acme.port, acme.tls, acme.system_id) == ("h.example.com", 2776, True, "gw-x")
    assert acme.system_type == "${lit}"
    assert acme.address_range == "x"


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_HOST", "env.example.com")
    path = write(tmp_path, "carriers:\n  a: {host: '${GW_TEST_HOST}', system_id: gw}\n")
    assert cf.load_config(path).carriers["a"].host == "env.example.com"


def test_env_missing_and_malformed(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        carriers:
          acme:
            host: "${A}-${B}-${A}"
            system_id: "${not valid}"
        """,
        env={},
    )
    assert [(p.line, p.key_path, p.message) for p in found] == [
        (3, "carriers.acme.host", "environment variable A is not set"),
        (3, "carriers.acme.host", "environment variable B is not set"),
        (4, "carriers.acme.system_id", found[2].message),
    ]
    assert "malformed" in found[2].message


def test_env_value_typed_and_checked(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "carriers:\n  a: {host: h, system_id: gw, port: '${P}', window: ${W}}\n",
        env={"P": "http", "W": "0"},
    )
    by_path = {p.key_path: p.message for p in found}
    assert by_path["carriers.a.port"] == "must be an integer"  # value not echoed
    assert by_path["carriers.a.window"] == "must be 1..1000"


# --- secrets ----------------------------------------------------------------------------

SECRET = "Sup3rS3cret"


def test_secrets_never_in_errors(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        f"""
        carriers:
          acme: {{host: h, system_id: gw, password: {SECRET}toolong}}
          b: {{host: h, system_id: gw, password: ${{PW}}, port: ${{PW}}, window: ${{PW}}}}
        destinations:
          a: {{type: url, url: "${{URL}}", auth: {{bearer: [{SECRET}]}}}}
          b:
            type: url
            url: ${{PW}}
            auth: {{jwt: {{secret: {SECRET}, algorithm: {SECRET}}}}}
            headers: {{X-Key: "{SECRET}\\n"}}
            method: ${{PW}}
            timeout: ${{PW}}
          c: {{type: device, uri: "sip:{SECRET}", password: {SECRET}}}
          d: {{type: email, to: "{SECRET}",
              smtp: {{host: h, from: a@b.example, password: {SECRET}}}}}
        api: {{tokens: [{SECRET}, ""], listen: ${{PW}}}}
        """,
        env={"PW": SECRET, "URL": "https://x.example.com/?a={{{{" + SECRET + "}}}}"},
    )
    assert len(found) >= 12
    text = "\n".join(str(p) for p in found)
    assert SECRET not in text
    assert SECRET.lower() not in text.lower()


def test_secrets_never_in_repr(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        carriers:
          acme: {{host: h, system_id: gw, password: ${{PW}}}}
        smtp: {{host: h, from: a@b.example, username: u, password: {SECRET}1}}  # no SMPP limit
        destinations:
          a: {{type: url, url: "https://x.example.com/", auth: {{jwt: {{secret: {SECRET}2}}}},
               headers: {{X-Key: {SECRET}3}}}}
          b: {{type: url, url: "https://x.example.com/",
              auth: {{basic: {{username: u, password: {SECRET}4}}}}}}
          c: {{type: url, url: "https://x.example.com/", auth: {{bearer: {SECRET}5}}}}
          d: {{type: device, uri: "sip:a@b.example.com", username: u, password: {SECRET}6}}
          e: {{type: email, to: x@y.example}}
        api: {{tokens: [{SECRET}7], admin_tokens: [{SECRET}8]}}
        """,
    )
    config = cf.load_config(path, env={"PW": "smpp-pw"})
    assert config.carriers["acme"].password == "smpp-pw"
    assert "smpp-pw" not in repr(config)
    assert SECRET not in repr(config)
    assert SECRET not in str(config)


# --- values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("2w", 1209600.0),
        ("45", 45.0),
        ("1.5", 1.5),
        ("1.5m", 90.0),
        ("0", 0.0),
        (" 10 s ", 10.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert cf.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "-5s", "s", "1h30m", "5 minutes", "1e3"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        cf.parse_duration(text)


@pytest.mark.parametrize(
    ("value", "ok"),
    [("30s", 30.0), ("250ms", 0.25), ("90", 90.0), ("2.5", 2.5), ("0s", None), ("ten", None)],
)
def test_duration_key(tmp_path: Path, value: str, ok: float | None) -> None:
    text = f"carriers:\n  a: {{host: h, system_id: gw, enquire_link: {value}}}\n"
    if ok is not None:
        assert cf.load_config(write(tmp_path, text), env={}).carriers["a"].enquire_link == ok
    else:
        found = problems(tmp_path, text)
        assert where(found) == {(2, "carriers.a.enquire_link")}


@pytest.mark.parametrize(
    ("text", "rate"), [("50/s", 50.0), ("3000/m", 50.0), ("7200/h", 2.0), ("10", 10.0)]
)
def test_rates(text: str, rate: float) -> None:
    assert cf.parse_rate(text) == rate


@pytest.mark.parametrize(
    ("value", "status"),
    [("0x64", 0x64), ('"0x64"', 0x64), ("100", 100), ('"0X58"', 0x58), ("0x14", 0x14)],
)
def test_temp_error_status(tmp_path: Path, value: str, status: int) -> None:
    text = f"carriers:\n  a: {{host: h, system_id: gw, temp_error_status: {value}}}\n"
    assert cf.load_config(write(tmp_path, text), env={}).carriers["a"].temp_error_status == status


@pytest.mark.parametrize("value", ["0", "ESME_RX_T_APPN", "0x100000000"])
def test_bad_temp_error_status(tmp_path: Path, value: str) -> None:
    text = f"carriers:\n  a: {{host: h, system_id: gw, temp_error_status: {value}}}\n"
    assert where(problems(tmp_path, text)) == {(2, "carriers.a.temp_error_status")}


def test_smpp_string_limits(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        carriers:
          a: {host: h, system_id: sixteen-chars-xx, system_type: thirteen-char}
          b: {host: h, system_id: "", address_range: "é"}
        """,
    )
    assert where(found) == {
        (2, "carriers.a.system_id"),
        (2, "carriers.a.system_type"),
        (3, "carriers.b.system_id"),
        (3, "carriers.b.address_range"),
    }


def test_retry_and_reconnect_consistency(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        carriers:
          a: {host: h, system_id: gw, reconnect: {min: 5m, max: 1s}}
        destinations:
          d: {type: none}
          u: {type: url, url: "https://x.example.com",
              retry: {interval: 1h, max: 1m, backoff: linear}}
        """,
    )
    assert where(found) == {
        (2, "carriers.a.reconnect"),
        (6, "destinations.u.retry.backoff"),
        (6, "destinations.u.retry.max"),
    }
    found = problems(
        tmp_path,
        'destinations:\n  u: {type: url, url: "https://x.example.com",\n'
        "      retry: {interval: 1h, max: 1m}}\n",
    )
    assert where(found) == {(3, "destinations.u.retry.max")}


def test_api_values(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        api:
          listen: localhost
          tokens: []
          status_url_allow: [10.0.0.0/8, not-a-net]
        """,
    )
    assert where(found) == {(2, "api.listen"), (4, "api.status_url_allow[1]")}


def test_problem_str_formats() -> None:
    assert str(cf.Problem(file="f.yaml", line=3, key_path="a.b", message="m")) == "f.yaml:3: a.b: m"
    assert str(cf.Problem(file="f.yaml", line=0, key_path="", message="m")) == "f.yaml: m"
    assert cf.normalize_number("+123") == "123"
    assert cf.normalize_number("123") == "123"


# --- robustness -------------------------------------------------------------------------

_KEYS = sorted(
    {*cf._TOP_KEYS, *cf._CARRIER_KEYS, *cf._SMTP_KEYS, "min", "max", "a2p_max_digits"}
    | {k for keys in cf._DEST_KEYS.values() for k in keys}
    | {"jwt", "basic", "bearer", "secret", "attempts", "interval", "backoff", "acme", "crm"}
    | {"incoming", "keywords", "a2p", "p2p", "delivered", "dead", "listen", "12345678"}
)
_SCALARS = st.one_of(
    st.sampled_from(
        [
            "url",
            "none",
            "email",
            "forward",
            "device",
            "acme",
            "crm",
            "30s",
            "0x64",
            "{{to}}",
            "https://x.example.com/{{id}}",
            "sip:a@b.example.com",
            "a@b.example",
            "${X}",
            "",
            "transmitter",
            "receiver",
            "5/s",
            "127.0.0.1:1",
            "10.0.0.0/8",
            "yes",
            "~",
        ]
    ),
    st.integers(-5, 70000).map(str),
    st.text(max_size=8),
)
_TREES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(_KEYS), children, max_size=5),
    ),
    max_leaves=25,
)


def _outcome(text: str) -> list[cf.Problem]:
    """Problems found, [] for a valid config; anything but ConfigError propagates."""
    try:
        config = cf.loads_config(text, env={"X": "1"})
    except cf.ConfigError as exc:
        return exc.problems
    assert isinstance(config, cf.Config)
    return []


@hypothesis.settings(max_examples=200, deadline=None, derandomize=True)
@hypothesis.given(tree=st.dictionaries(st.sampled_from(_KEYS), _TREES, max_size=6))
def test_any_shape_gives_config_or_config_error(tree: dict[str, object]) -> None:
    for problem in _outcome(json.dumps(tree)):  # JSON is YAML
        assert problem.line >= 0
        assert problem.message


_VALID: dict[str, object] = {
    "store": "gw.db",
    "classify": {"a2p_max_digits": 8},
    "carriers": {
        "acme": {"host": "h", "system_id": "gw", "password": "${X}", "reconnect": {"min": 1}},
        "rx": {"host": "h", "system_id": "gw", "bind": "receiver"},
    },
    "smtp": {"host": "h", "from": "a@b.example", "username": "u", "password": "p"},
    "api": {"listen": "127.0.0.1:1", "tokens": ["t"], "status_url_allow": ["10.0.0.0/8"]},
    "destinations": {
        "crm": {
            "type": "url",
            "url": "https://x.example.com/{{id}}",
            "body": {"a": "{{to}}"},
            "headers": {"K": "v"},
            "auth": {"jwt": {"secret": "s"}},
            "retry": {"attempts": 1, "interval": "1s", "max": "1h"},
            "success": [200],
        },
        "b": {"type": "url", "url": "https://x.example.com", "auth": {"basic": {"username": "u",
              "password": "p"}}},
        "mail": {"type": "email", "to": ["a@b.example"], "smtp": {"port": 2525}},
        "fwd": {"type": "forward", "to": "{{to}}", "carrier": "acme", "from": "123"},
        "dev": {"type": "device", "uri": "sip:a@b.example.com", "username": "u", "password": "p"},
        "drop": {"type": "none"},
    },
    "numbers": {"123": {"incoming": ["crm", "b"], "delivery": "crm", "keywords": {"S": "drop"}}},
    "routes": {"a2p": "crm", "p2p": ["fwd"], "delivery": "crm"},
}  # fmt: skip


def _paths(tree: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, (*prefix, key))
    return out


_VALID_PATHS = _paths(_VALID)[1:]


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
@hypothesis.given(
    path=st.sampled_from(_VALID_PATHS),
    replacement=st.one_of(st.none(), _TREES),
    delete=st.booleans(),
)
def test_any_mutation_of_a_valid_config(
    path: tuple[str, ...], replacement: object, delete: bool
) -> None:
    assert _outcome(json.dumps(_VALID)) == []
    tree = json.loads(json.dumps(_VALID))
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    for problem in _outcome(json.dumps(tree)):
        assert problem.line >= 1
        assert problem.message


def test_same_file_loads_equal(tmp_path: Path) -> None:
    path = ROOT / "config" / "example.yaml"
    assert cf.load_config(path, env=EXAMPLE_ENV) == cf.load_config(path, env=EXAMPLE_ENV)
    changed = cf.load_config(path, env={**EXAMPLE_ENV, "ACME_PASSWORD": "other"})
    assert changed.carriers["acme"] != cf.load_config(path, env=EXAMPLE_ENV).carriers["acme"]
    assert changed.destinations == cf.load_config(path, env=EXAMPLE_ENV).destinations


def test_invalid_top_level_smtp_reported_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        smtp: {host: h}
        destinations:
          mail: {type: email, to: a@b.example}
        """,
    )
    assert where(found) == {(1, "smtp.from")}
