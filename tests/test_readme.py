"""The README's examples are true: its snippets run and its sample output is what buttress writes.

Every fenced block is found by its language; a block whose output is compared with a real run
is named by an ``<!-- example:NAME -->`` comment on the line before its fence. Sample lines
are compared field by field with the line the code writes for the same request, ignoring only
the values that differ on every run (timestamps, request ids, durations, seconds left).
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import io
import json
import logging
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import buttress
from buttress import devmode
from buttress.config import ConfigError
from tests.conftest import ROOT, LogCapture, client_for

README = ROOT / "README.md"
MARKER = re.compile(r"^\s*<!-- example:([\w-]+) -->\s*$")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    lang: str
    text: str  # without the fences and the list indentation
    line: int  # 1-based line of the opening fence
    name: str | None  # from an ``<!-- example:NAME -->`` line right before the fence


def readme_blocks() -> list[Block]:
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = opening.groups()
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != f"{indent}```":
            body.append(lines[i].removeprefix(indent))
            i += 1
        marker = MARKER.match(lines[start - 1]) if start else None
        name = marker.group(1) if marker else None
        blocks.append(Block(lang, "\n".join(body) + "\n", start + 1, name))
        i += 1
    return blocks


def named(name: str) -> Block:
    (block,) = [b for b in readme_blocks() if b.name == name]
    return block


def same_fields(shown: dict[str, Any], real: dict[str, Any], varying: set[str]) -> None:
    """``shown`` has exactly ``real``'s keys and values, except the values that vary."""
    assert sorted(shown) == sorted(real)
    for key in varying & set(real):
        assert type(shown[key]) is type(real[key]), key
    if "request_id" in varying:
        assert REQUEST_ID.match(shown["request_id"]) and REQUEST_ID.match(real["request_id"])
    if "timestamp" in varying:
        assert TIMESTAMP.match(shown["timestamp"]) and TIMESTAMP.match(real["timestamp"])
    assert {k: v for k, v in shown.items() if k not in varying} == {
        k: v for k, v in real.items() if k not in varying
    }


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    """configure_logging (run by a snippet's ``wrap()``) adds a root handler; remove it after."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)


# --- Python snippets ------------------------------------------------------------------

_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def _ok(request):
    return JSONResponse({"ok": True})

app = Starlette(routes=[Route("/ok", _ok)])
"""

#: Names the README's snippets take for granted, by the example's name.
PRELUDES: dict[str, str] = {
    "wrap": _APP,
    "layers": _APP
    + """
class UserExists(Exception):
    pass

async def _signup(request):
    raise UserExists("alice")

app.router.routes.append(Route("/users", _signup, methods=["POST"]))
""",
    "exception-map": """
import buttress
from starlette.applications import Starlette
from starlette.routing import Route

class UserAlreadyExists(Exception): pass
class PlanLimitReached(Exception): pass
class NotFoundError(Exception): pass
class AdminAlreadyExists(UserAlreadyExists): pass

def _raising(exc):
    async def endpoint(request):
        raise exc
    return endpoint

app = Starlette(routes=[
    Route("/user", _raising(UserAlreadyExists("alice@example.com"))),
    Route("/admin", _raising(AdminAlreadyExists("root"))),
    Route("/plan", _raising(PlanLimitReached("seat 11 of 10"))),
    Route("/order", _raising(NotFoundError("Order 17 not found"))),
])
""",
    "rate-limit-code": _APP,
    "fastapi-rate-limit": "from fastapi import FastAPI\napp = FastAPI()\n",
    "retry-registry": _APP + "import buttress\nfrom buttress.retry import transient\n",
    "retry-block": """
from buttress.retry import transient

def read_config():
    return {}

async def warm_cache():
    pass
""",
}

#: What a user would then see of the app a snippet built: (method, path, status, body).
EXPECTED_ANSWERS: dict[str, list[tuple[str, str, int, Any]]] = {
    "wrap": [("GET", "/ok", 200, {"ok": True}), ("GET", "/nope", 404, {"detail": "Not Found"})],
    "layers": [
        ("POST", "/users", 409, {"detail": "That user already exists"}),
        ("GET", "/ok", 200, {"ok": True}),
    ],
    "exception-map": [
        ("GET", "/user", 409, {"detail": "Conflict"}),
        ("GET", "/admin", 409, {"detail": "Conflict"}),
        ("GET", "/plan", 402, {"detail": "Upgrade your plan to do that"}),
        ("GET", "/order", 404, {"detail": "Order 17 not found"}),
    ],
}


def python_blocks() -> list[Any]:
    """The Python blocks, with ids that do not move when the README grows (xdist compares)."""
    params, seen = [], set()
    for block in readme_blocks():
        if block.lang != "python":
            continue
        name = block.name or block.text.strip().splitlines()[0]
        while name in seen:
            name += "+"
        seen.add(name)
        params.append(pytest.param(block, id=name))
    return params


async def run_snippet(block: Block) -> dict[str, Any]:
    """Run a README snippet (after its prelude) as a module of its own; its namespace."""
    namespace: dict[str, Any] = {"__name__": f"readme_line_{block.line}"}
    exec(PRELUDES.get(block.name or "", ""), namespace)
    # Line numbers in a failure point at the README; `async for` may stand at top level.
    source = "\n" * (block.line) + block.text.replace("routes=[...]", "routes=[]")
    code = compile(source, str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        await result
    return namespace


@pytest.mark.parametrize("block", python_blocks())
async def test_python_snippet_runs(block: Block, restore_root_logging: None) -> None:
    """Every Python snippet in the README runs as written (placeholders filled in)."""
    namespace = await run_snippet(block)
    app = namespace.get("app")
    for method, path, status, body in EXPECTED_ANSWERS.get(block.name or "", []):
        async with client_for(app) as client:
            response = await client.request(method, path)
        assert (response.status_code, response.json()) == (status, body), path
    close = getattr(app, "aclose", None)
    if close is not None:  # a rate limiter: close its storage
        await close()


def test_exception_map_variable_in_the_example_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``BUTTRESS_EXCEPTION_MAP`` the exception-map example suggests is a valid setting."""
    text = named("exception-map").text
    comment = " ".join(
        line.split("#", 1)[1].strip() for line in text.splitlines() if line.startswith("#")
    )
    (assignment,) = shlex.split(comment.split("BUTTRESS_EXCEPTION_MAP=", 1)[1])
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "errors.py").write_text(
        "class UserAlreadyExists(Exception): ...\nclass PlanLimitReached(Exception): ...\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "myapp", raising=False)
    monkeypatch.delitem(sys.modules, "myapp.errors", raising=False)
    try:
        settings = buttress.Settings.from_env({"BUTTRESS_EXCEPTION_MAP": assignment})
    finally:
        sys.modules.pop("myapp.errors", None)
        sys.modules.pop("myapp", None)
    mapped = {kind.__name__: answer for kind, answer in settings.exception_map.items()}
    assert mapped == {"UserAlreadyExists": 409, "PlanLimitReached": (402, "Upgrade your plan")}


def test_python_snippets_that_need_names_are_named() -> None:
    """Every prelude and expected answer belongs to a Python example the README still has."""
    names = {b.name for b in readme_blocks() if b.lang == "python"}
    assert set(PRELUDES) | set(EXPECTED_ANSWERS) <= names


# --- sample log lines -------------------------------------------------------------------


async def _item(request: Request) -> JSONResponse:
    return JSONResponse({"item_id": request.path_params["item_id"]})


async def test_access_log_example_is_a_real_line(logs: LogCapture) -> None:
    """The access-log line shown is the one a GET /items/42 from curl writes, field by field."""
    shown = json.loads(named("access-log").text)
    app = buttress.wrap(
        Starlette(routes=[Route("/items/{item_id}", _item)]), configure_logging=False
    )
    async with client_for(app, client=(shown["client_ip"], 50000)) as client:
        await client.get(shown["path"], headers={"user-agent": shown["user_agent"]})
    (real,) = logs.access
    same_fields(shown, real, varying={"timestamp", "request_id", "duration_ms"})


async def test_retrying_example_is_a_real_line(logs: LogCapture) -> None:
    """The ``retrying`` line shown is the one a retried call in a request writes, field by field."""
    from buttress.retry import transient

    shown = json.loads(named("retrying").text)
    calls: list[str] = []

    async def no_sleep(seconds: float) -> None:
        pass

    @transient(sleep=no_sleep, name=shown["function"])
    async def fetch_stock(sku: str) -> int:
        calls.append(sku)
        if len(calls) == 1:
            raise ConnectionError(shown["error_message"])
        return 3

    async def stock(request: Request) -> JSONResponse:
        return JSONResponse({"stock": await fetch_stock(request.path_params["sku"])})

    app = buttress.wrap(Starlette(routes=[Route("/stock/{sku}", stock)]), configure_logging=False)
    async with client_for(app, client=(shown["client_ip"], 50000)) as client:
        assert (await client.get(shown["path"])).status_code == 200
    (real,) = logs.events("retrying")
    same_fields(shown, real, varying={"timestamp", "request_id"})


def test_config_error_example_is_the_real_message() -> None:
    """The ConfigError shown for BUTTRESS_LOG_LEVEL=loud is the message a user gets."""
    with pytest.raises(ConfigError) as raised:
        buttress.Settings.from_env({"BUTTRESS_LOG_LEVEL": "loud"})
    kind = type(raised.value)
    assert named("config-error").text == f"{kind.__module__}.{kind.__qualname__}: {raised.value}\n"


# --- the 429 ----------------------------------------------------------------------------


def parse_http(text: str) -> tuple[str, list[tuple[str, str]], str]:
    head, _, body = text.partition("\n\n")
    status_line, *header_lines = head.splitlines()
    headers = [tuple(h.split(": ", 1)) for h in header_lines]
    return status_line, headers, body.rstrip("\n")  # type: ignore[return-value]


async def test_rate_limit_response_example_is_the_real_429() -> None:
    """The 429 shown is the real one: status, every header buttress sends, and the body."""
    status_line, shown_headers, shown_body = parse_http(named("rate-limit-429").text)
    shown = dict(shown_headers)
    limit = int(shown["ratelimit-limit"])
    items = Starlette(routes=[Route("/items/{item_id}", _item)])
    app = buttress.wrap(items, configure_logging=False, rate_limit=f"{limit}/minute")
    async with client_for(app) as client:
        for _ in range(limit):
            assert (await client.get("/items/42")).status_code == 200
        response = await client.get("/items/42")
    status = HTTPStatus(response.status_code)
    assert status_line == f"HTTP/1.1 {status.value} {status.phrase}"
    real = dict(response.headers)
    assert sorted(shown) == sorted(real)
    for seconds in ("retry-after", "ratelimit-reset"):
        assert 1 <= int(shown[seconds]) <= 60 and 1 <= int(real[seconds]) <= 60
    assert REQUEST_ID.match(shown["x-request-id"])
    varying = {"retry-after", "ratelimit-reset", "x-request-id"}
    assert {k: v for k, v in shown.items() if k not in varying} == {
        k: v for k, v in real.items() if k not in varying
    }
    assert shown_body == response.text
    assert int(shown["content-length"]) == len(shown_body.encode())


# --- development mode -------------------------------------------------------------------


def test_startup_panel_example_is_the_real_panel() -> None:
    """The development panel shown is what ``wrap()`` prints for the settings it lists."""
    shown = named("startup-panel").text
    settings = buttress.Settings.from_env(
        {}, env="development", rate_limits={"/items/{item_id}": "5/10seconds"}
    )
    out = io.StringIO()
    width = len(shown.splitlines()[0])
    Console(file=out, width=width, color_system=None).print(devmode.startup_summary(settings))
    assert out.getvalue() == shown


#: The app behind the development-mode example; the README shows it at /srv/shop/payments.py.
PAYMENTS = """\
from starlette.applications import Starlette
from starlette.routing import Route


def charge(order_id: int, amount: int, card_token: str) -> None:
    raise ConnectionError("payment gateway: connection refused")


async def pay(request):
    order_id = int(request.path_params["order_id"])
    amount = 1999
    card_token = "tok_live_4242"
    charge(order_id, amount, card_token)


app = Starlette(routes=[Route("/orders/{order_id}/pay", pay, methods=["POST"])])
"""
SHOWN_DIR = "/srv/shop"
CONSOLE_LINE = re.compile(r"^(\S+Z) \[(\w+)\s*\] (.+?)\s+\[([\w.]+)\] (.*)$")


def console_event(line: str) -> dict[str, str]:
    """A console log line as fields: timestamp, level, event, logger and its key=value pairs."""
    match = CONSOLE_LINE.match(line)
    assert match, line
    timestamp, level, event, logger, pairs = match.groups()
    fields = dict(pair.split("=", 1) for pair in pairs.split(" "))
    return {"timestamp": timestamp, "level": level, "event": event, "logger": logger, **fields}


def traceback_lines(text: str) -> list[str]:
    """The traceback panel and what follows it, with padding and memory addresses left out."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("╭"))
    end = next(i for i, line in enumerate(lines) if line.startswith("[NOTE]"))
    normal = []
    for line in lines[start : end + 1]:
        line = re.sub(r"0x[0-9a-f]+", "0x…", line)
        line = re.sub(r"\[NOTE\] \d+ ", "[NOTE] N ", line)  # depends on the framework version
        line = re.sub(r"─+", "─", line)
        normal.append(re.sub(r"\s+", " ", line).strip())
    return normal


def development_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: dict[str, str]
) -> str:
    """What a development console shows for one request to the payments app."""
    from buttress.stack import logging_options

    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    (tmp_path / "payments.py").write_text(PAYMENTS, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("readme_payments", tmp_path / "payments.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    settings = buttress.Settings.from_env({}, env="development")
    stream = io.StringIO()
    buttress.configure_logging(**logging_options(settings), stream=stream)
    collected: list[Any] = []
    with devmode.collect_summaries(collected):  # the panel is checked on its own
        app = buttress.wrap(module.app, settings, configure_logging=False)

    async def post() -> None:
        async with client_for(app, client=(request["client_ip"], 50000)) as client:
            headers = {"user-agent": request["user_agent"]}
            assert (await client.post(request["path"], headers=headers)).status_code == 500

    asyncio.run(post())
    devmode.wait_for_tracebacks()
    return stream.getvalue().replace(str(tmp_path), SHOWN_DIR)


def test_development_traceback_example_is_a_real_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_root_logging: None
) -> None:
    """The development console shown is what an error in a request prints, line by line."""
    shown = named("dev-traceback").text
    shown_events = [console_event(line) for line in shown.splitlines() if CONSOLE_LINE.match(line)]
    access = next(e for e in shown_events if e["logger"] == "buttress.access")
    real = development_run(tmp_path, monkeypatch, access)
    real_events = {
        (e["event"], e["logger"]): e
        for e in (console_event(line) for line in real.splitlines() if CONSOLE_LINE.match(line))
    }
    assert len(shown_events) == 2
    for event in shown_events:
        same_fields(
            event,
            real_events[(event["event"], event["logger"])],
            varying={"timestamp", "request_id", "duration_ms"},
        )
    assert traceback_lines(shown) == traceback_lines(real)
    assert shown.rstrip("\n").endswith("library frames hidden")


# --- shell, YAML and the list of examples -----------------------------------------------


def shell_commands() -> Iterator[list[str]]:
    """The commands of every shell block (comments left out)."""
    for block in readme_blocks():
        if block.lang in ("sh", "bash"):
            for line in block.text.splitlines():
                words = shlex.split(line.replace("<this repository>", "URL"), comments=True)
                if words:
                    yield words


def test_shell_examples_use_real_commands_and_options() -> None:
    """``buttress`` commands parse with the CLI's own options; ``make`` targets exist."""
    from buttress.cli import _parser

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.MULTILINE))
    seen = set()
    for words in shell_commands():
        seen.add(words[0])
        if words[0] == "buttress":
            args = words[1 : words.index("--")] if "--" in words else words[1:]
            _, unknown = _parser().parse_known_args(args)
            assert unknown == [], words
        elif words[0] == "make":
            assert set(words[1:]) <= targets, words
    assert {"buttress", "make", "export", "pip"} <= seen


def test_shell_exports_are_valid_settings() -> None:
    """Every ``export BUTTRESS_...`` in the README is a setting buttress accepts."""
    environ = {}
    for words in shell_commands():
        if words[0] == "export":
            key, _, value = words[1].partition("=")
            environ[key] = value
    assert len(environ) >= 4
    settings = buttress.Settings.from_env(environ)
    assert settings.rate_limits  # the per-route JSON parsed


def test_install_command_names_the_wheel_make_builds() -> None:
    """The wheel the install commands name has this version and real extras."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version = "(.+)"$', pyproject, flags=re.MULTILINE)
    assert version
    section = pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^(\w+) = \[", section, flags=re.MULTILINE))
    wheels = [w for words in shell_commands() for w in words if w.startswith("dist/buttress-")]
    assert wheels
    for wheel in wheels:
        name, _, named_extras = wheel.partition("[")
        assert name == f"dist/buttress-{version.group(1)}-py3-none-any.whl"
        assert set(named_extras.rstrip("]").split(",")) <= extras


def test_yaml_examples_parse() -> None:
    """Every YAML block is valid YAML (the Prometheus scrape config)."""
    blocks = [b for b in readme_blocks() if b.lang == "yaml"]
    assert blocks
    for block in blocks:
        assert yaml.safe_load(block.text)


CHECKED_OUTPUT = {
    "access-log",
    "retrying",
    "config-error",
    "rate-limit-429",
    "startup-panel",
    "dev-traceback",
}


def test_every_named_example_is_checked() -> None:
    """Each ``<!-- example:NAME -->`` names one block, and each checked example is still there."""
    names = [b.name for b in readme_blocks() if b.name]
    assert len(names) == len(set(names))
    assert set(names) == CHECKED_OUTPUT | set(PRELUDES) | set(EXPECTED_ANSWERS)
    text = README.read_text(encoding="utf-8")
    assert len(re.findall(r"<!-- example:", text)) == len(names)  # none strayed off a fence


def test_every_output_block_is_checked() -> None:
    """No sample output or JSON block goes unchecked: each one is a named example."""
    unchecked = [
        b.line for b in readme_blocks() if b.lang in ("", "json", "text") and b.name is None
    ]
    assert unchecked == []
