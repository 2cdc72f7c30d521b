"""Headless Chromium for testing pages: the DOM after the page's scripts ran, or a PNG.

Chromium is Debian's ``/usr/bin/chromium`` (or ``$DROVER_CHROMIUM``). Each call starts a
fresh browser with its own throw-away profile and no network beyond what the page asks of
the URL it was given; the browser's whole process group is killed when the call ends, and
on a timeout. A test that needs the browser calls :func:`require_chromium` first: it skips
on a laptop without Chromium and fails in CI (``CI=true``), like the brokers' ``require``.

    require_chromium()
    dom = parse_dom(rendered_dom(f"http://127.0.0.1:{port}/#token=secret", wait_ms=3000))
    assert dom.by_id("light").attrs["data-light"] == "red"
    rows = dom.find_all("tr", {"data-queue": True})  # True: the attribute is there at all
    screenshot(f"http://127.0.0.1:{port}/", tmp_path / "page.png")

``wait_ms`` is a virtual-time budget: timers (``setTimeout``, polling) run that far ahead
of the real clock, and the clock waits for network fetches in flight, so a page polling
every 2 s polls about ``wait_ms / 2000`` times however long its server takes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

__all__ = [
    "BrowserError",
    "ChromiumMissing",
    "Element",
    "chromium_path",
    "parse_dom",
    "rendered_dom",
    "require_chromium",
    "screenshot",
]

_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")

# A closed machine: no sandbox (tests run as root in containers), no GPU, and nothing the
# browser would fetch on its own (updates, sync, field trials, QUIC probes).
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)

# Beyond the page's own virtual time: starting the browser, and a slow machine.
_STARTUP_ALLOWANCE_S = 45.0


class BrowserError(RuntimeError):
    """Chromium did not produce what was asked: exit code, timeout, or no output."""


class ChromiumMissing(BrowserError):
    """No Chromium on this machine."""


def chromium_path() -> str | None:
    """The browser to run: ``$DROVER_CHROMIUM``, else the first of the usual names found."""
    configured = os.environ.get("DROVER_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """Chromium's path; skips the test without it, or fails it in CI (``CI=true``)."""
    found = chromium_path()
    if found is not None:
        return found
    message = "Chromium is not installed (apt-get install chromium, or set DROVER_CHROMIUM)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must install it")
    pytest.skip(message)


def rendered_dom(url: str, *, wait_ms: int = 3000, timeout_s: float | None = None) -> str:
    """The page's DOM, serialised, after ``wait_ms`` of virtual time ran its scripts."""
    out = _run(
        url,
        ["--dump-dom", f"--virtual-time-budget={wait_ms}"],
        timeout_s=timeout_s if timeout_s is not None else wait_ms / 1000 + _STARTUP_ALLOWANCE_S,
    )
    dom = out.decode("utf-8", errors="replace")
    if "<html" not in dom.lower():
        raise BrowserError(f"Chromium gave no DOM for {url}: {dom[:500]!r}")
    return dom


def screenshot(
    url: str,
    path: str | os.PathLike[str],
    *,
    wait_ms: int = 3000,
    window: tuple[int, int] = (1280, 1600),
    timeout_s: float | None = None,
) -> Path:
    """A PNG of the page, ``window`` wide and high, after ``wait_ms`` of virtual time."""
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    width, height = window
    _run(
        url,
        [
            f"--screenshot={target}",
            f"--window-size={width},{height}",
            f"--virtual-time-budget={wait_ms}",
            "--run-all-compositor-stages-before-draw",
        ],
        timeout_s=timeout_s if timeout_s is not None else wait_ms / 1000 + _STARTUP_ALLOWANCE_S,
    )
    if not target.is_file() or target.stat().st_size == 0:
        raise BrowserError(f"Chromium wrote no screenshot of {url} to {target}")
    return target


def _run(url: str, extra: Sequence[str], *, timeout_s: float) -> bytes:
    """Run one headless Chromium on ``url`` in its own process group; its stdout."""
    browser = chromium_path()
    if browser is None:
        raise ChromiumMissing("Chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="drover-chromium-", ignore_cleanup_errors=True) as tmp:
        profile = Path(tmp) / "profile"
        command = [browser, *_FLAGS, f"--user-data-dir={profile}", *extra, url]
        env = {**os.environ, "HOME": tmp, "TZ": "UTC", "LANG": "C.UTF-8"}
        env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        with subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp,
            start_new_session=True,  # its own process group: helpers die with it
        ) as process:
            try:
                out, err = process.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                process.communicate()
                raise BrowserError(
                    f"Chromium did not finish {url} in {timeout_s:.0f} s; killed"
                ) from None
            finally:
                _kill_group(process.pid)  # helpers (crashpad, zygote) left behind
        if process.returncode != 0:
            raise BrowserError(f"Chromium exited {process.returncode} on {url}: {_tail(err)}")
        return out


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _tail(stderr: bytes, lines: int = 15) -> str:
    text = stderr.decode("utf-8", errors="replace").strip().splitlines()
    # Chromium complains about D-Bus on any machine without one: noise, not a cause.
    useful = [line for line in text if "dbus" not in line.lower()]
    return "\n".join(useful[-lines:]) or "(nothing on stderr)"


# ---- Reading the DOM ------------------------------------------------------------------------

_VOID = frozenset(
    [
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    ]
)


@dataclass
class Element:
    """One element of a parsed page: its tag, attributes, and children (elements or text)."""

    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Element | str] = field(default_factory=list, repr=False)

    @property
    def text(self) -> str:
        """Its text, as a reader sees it: whitespace runs made one space."""
        return " ".join(self._raw_text().split())

    @property
    def elements(self) -> list[Element]:
        """Its child elements (not text)."""
        return [child for child in self.children if isinstance(child, Element)]

    def iter(self) -> Iterator[Element]:
        """Itself and every element under it, in document order."""
        yield self
        for child in self.elements:
            yield from child.iter()

    def find_all(
        self, tag: str | None = None, attrs: Mapping[str, str | bool] | None = None
    ) -> list[Element]:
        """Elements under it (itself included) with ``tag`` and ``attrs``.

        An attribute's value must be equal, except ``class``, which must be one of the
        element's classes; ``True`` only asks that the attribute be there.
        """
        return [e for e in self.iter() if e._matches(tag, attrs or {})]

    def one(self, tag: str | None = None, attrs: Mapping[str, str | bool] | None = None) -> Element:
        """The only element matching (see :meth:`find_all`); AssertionError if not one."""
        found = self.find_all(tag, attrs)
        if len(found) != 1:
            raise AssertionError(f"{len(found)} elements match {tag or '*'} {dict(attrs or {})}")
        return found[0]

    def by_id(self, element_id: str) -> Element:
        return self.one(None, {"id": element_id})

    @property
    def hidden(self) -> bool:
        return "hidden" in self.attrs

    def _matches(self, tag: str | None, attrs: Mapping[str, str | bool]) -> bool:
        if tag is not None and self.tag != tag:
            return False
        for name, wanted in attrs.items():
            value = self.attrs.get(name)
            if value is None:
                return False
            if wanted is True:
                continue
            if name == "class":
                if str(wanted) not in value.split():
                    return False
            elif value != wanted:
                return False
        return True

    def _raw_text(self) -> str:
        if self.tag in {"script", "style"}:
            return ""
        return "".join(
            child if isinstance(child, str) else f" {child._raw_text()} " for child in self.children
        )


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document")
        self._open: list[Element] = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self._open[-1].children.append(element)
        if tag not in _VOID:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open[-1].children.append(Element(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._open) - 1, 0, -1):
            if self._open[depth].tag == tag:
                del self._open[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._open[-1].children.append(data)


def parse_dom(html: str) -> Element:
    """A tree of :class:`Element` from serialised HTML (as :func:`rendered_dom` gives)."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root
