"""A real load balancer, host agents and flag service, speaking Drover's HTTP driver protocol.

For tests, over real sockets; the protocol is in ``workers/drivers/http.py``. The load
balancer and the flags answer at ``http://127.0.0.1:PORT``. Every host is a loopback
address (127.0.0.2, 127.0.0.3...: Linux routes all of 127/8 to loopback) whose agent
listens on a port all hosts share, so the agent template is ``http://{host}:PORT2``, and
a host whose listener is closed refuses connections for real. Worker processes in other
processes are handed :meth:`LoadBalancer.driver_settings`.

    with LoadBalancer({"web": loopback_hosts(3)}, version="1.0") as lb:
        ...  # drive it, then read lb.host("web", host), lb.events(), lb.requests()
"""

from __future__ import annotations

import ipaddress
import json
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, cast

__all__ = ["Event", "HostView", "LoadBalancer", "Request", "loopback_hosts"]

Json = dict[str, Any]
Body = Json | str  # a str is sent as it is: for answers that are not JSON


def loopback_hosts(count: int, first: int = 2) -> list[str]:
    """``count`` host names that are loopback addresses: 127.0.0.2, 127.0.0.3..."""
    return [f"127.0.0.{first + n}" for n in range(count)]


class Event(NamedTuple):
    """A change of state: drain, undrain, deploy (detail: the version), switch, flag."""

    kind: str
    service: str
    host: str  # "" for a switch or a flag
    detail: str  # the version, the colour, or "name=True"
    t: float  # time.monotonic()


class Request(NamedTuple):
    method: str
    path: str
    address: str  # the host whose agent was asked, or "lb" (load balancer and flags)


class HostView(NamedTuple):
    version: str
    state: str  # serving | draining | drained
    in_flight: int
    healthy: bool


@dataclass
class _Host:
    version: str
    healthy: bool = True
    load: int = 0  # requests in flight while serving
    finish_every_s: float = 0.0  # once draining, one of them finishes this often
    drained_at: float | None = None  # when the drain began; None while serving

    def view(self, now: float) -> HostView:
        if self.drained_at is None:
            return HostView(self.version, "serving", self.load, self.healthy)
        # Derived on each read rather than counted down by a timer: no thread, no race.
        every, since = self.finish_every_s, now - self.drained_at
        left = max(0, self.load - int(since // every)) if every > 0 else 0
        return HostView(self.version, "draining" if left else "drained", left, self.healthy)


@dataclass
class _Canned:
    count: int
    status: int
    body: Body
    address: str | None  # None: any request


class _Listener(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], lb: LoadBalancer, agent: str | None):
        self.lb, self.agent = lb, agent
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # Not HTTPServer's: it looks the address up in DNS (getfqdn), which can take seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out hangs up before a slow answer: expected, not a failure.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read lb.requests(), not stderr

    def _answer(self) -> None:
        listener = cast(_Listener, self.server)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization")
        status, body = listener.lb._serve(self.command, self.path, listener.agent, auth, raw)
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = _answer


class LoadBalancer:
    """The server and its state; every method may be called while requests arrive."""

    def __init__(
        self,
        hosts: Mapping[str, Iterable[str]],  # per service, loopback addresses
        *,
        version: str = "1.0",  # what every host runs at first
        live: Mapping[str, str] | None = None,  # colour per service; none by default
        token: str | None = None,  # required as a bearer token when given
    ):
        self._hosts = {(s, h): _Host(version) for s, names in hosts.items() for h in names}
        if not all(ipaddress.ip_address(h).is_loopback for _, h in self._hosts):
            raise ValueError("hosts must be loopback addresses (see loopback_hosts)")
        self._live: dict[str, str | None] = {s: (live or {}).get(s) for s in hosts}
        self._flags: dict[tuple[str, str], bool] = {}  # a PUT makes a flag
        self._token = token
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._requests: list[Request] = []
        self._canned: list[_Canned] = []
        self._delay: dict[str, float] = {}
        self._agents: dict[str, _Listener] = {}
        self._control = self._start(("127.0.0.1", 0), None)
        self._port = self._open_agents(sorted({h for _, h in self._hosts}))
        self.lb_url = f"http://127.0.0.1:{self._control.server_address[1]}"  # flags too
        self.agent_url = f"http://{{host}}:{self._port}"

    def driver_settings(self, **extra: object) -> dict[str, object]:
        """A fleet file's ``driver:`` for these hosts (or HttpDriverConfig's arguments)."""
        urls = {"load_balancer": self.lb_url, "agent": self.agent_url, "flags": self.lb_url}
        return {"kind": "http", **urls, **extra}

    # What tests control.
    def set_health(self, service: str, host: str, healthy: bool) -> None:
        with self._lock:
            self._hosts[service, host].healthy = healthy

    def hold_requests(self, service: str, host: str, count: int, finish_every_s: float) -> None:
        """``count`` requests in flight while serving; once draining, one finishes so often."""
        with self._lock:
            self._hosts[service, host].load = count
            self._hosts[service, host].finish_every_s = finish_every_s

    def slow(self, host: str, delay_s: float) -> None:
        """The host's agent waits ``delay_s`` before each answer."""
        with self._lock:
            self._delay[host] = delay_s

    def answer_next(
        self, count: int, status: int = 503, body: Body | None = None, *, host: str | None = None
    ) -> None:
        """The next ``count`` requests (to ``host``'s agent, or to anything) get this answer."""
        with self._lock:
            self._canned.append(_Canned(count, status, body or {"error": "injected"}, host))

    def refuse(self, host: str) -> None:
        """Close the host's agent listener: connections to it are refused."""
        _stop(self._agents.pop(host))

    def listen(self, host: str) -> None:
        """Open a refusing host's agent listener again."""
        self._agents[host] = self._start((host, self._port), host)

    # What tests read.
    def host(self, service: str, host: str) -> HostView:
        with self._lock:
            return self._hosts[service, host].view(time.monotonic())

    def live(self, service: str) -> str | None:
        with self._lock:
            return self._live[service]

    def flag(self, service: str, name: str) -> bool | None:
        with self._lock:
            return self._flags.get((service, name))

    def events(self, kind: str | None = None) -> list[Event]:
        with self._lock:
            return [e for e in self._events if kind in (None, e.kind)]

    def requests(self, address: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self._requests if address in (None, r.address)]

    def most_not_serving(self, service: str) -> int:
        """The most hosts of ``service`` out of the load balancer (draining or drained) at once."""
        out: set[str] = set()
        most = 0
        for event in self.events():
            if event.service == service and event.kind in ("drain", "undrain"):
                (out.add if event.kind == "drain" else out.discard)(event.host)
                most = max(most, len(out))
        return most

    # Lifecycle.
    def __enter__(self) -> LoadBalancer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for host in list(self._agents):
            self.refuse(host)
        _stop(self._control)

    def _start(self, address: tuple[str, int], agent: str | None) -> _Listener:
        listener = _Listener(address, self, agent)
        # A short poll, because shutdown() waits for it: closing must not slow every test.
        threading.Thread(target=listener.serve_forever, args=(0.02,), daemon=True).start()
        return listener

    def _open_agents(self, hosts: list[str]) -> int:
        """One listener per host address, all on the port the first one was given."""
        attempts = 10
        while True:
            port = 0
            try:
                for host in hosts:
                    self._agents[host] = self._start((host, port), host)
                    port = self._agents[host].server_address[1]
                return port
            except OSError:  # that port is taken on another address: start over
                for host in list(self._agents):
                    self.refuse(host)
                attempts -= 1
                if not attempts:
                    raise

    # The protocol.
    def _serve(
        self, method: str, path: str, agent: str | None, auth: str | None, raw: bytes
    ) -> tuple[int, Body]:
        address = agent or "lb"
        with self._lock:
            self._requests.append(Request(method, path, address))
            delay = self._delay.get(address, 0.0)
        time.sleep(delay)  # outside the lock: a slow host must not slow the others
        if self._token is not None and auth != f"Bearer {self._token}":
            return 401, {"error": "a bearer token is required"}
        with self._lock:
            canned = next((c for c in self._canned if c.address in (None, agent)), None)
            if canned is not None:
                canned.count -= 1
                if canned.count <= 0:
                    self._canned.remove(canned)
                return canned.status, canned.body
            try:
                parts = (method, *path.strip("/").split("/"))
                route = self._agent if agent else self._balance
                return route(parts, agent or "", json.loads(raw or b"{}"), time.monotonic())
            except KeyError:  # an unknown service, host, flag or path
                return 404, {"error": f"no {method} {path} on {address}"}
            except (ValueError, TypeError):  # not JSON, or not the JSON the protocol asks for
                return 400, {"error": f"{raw[:100]!r} is not the body the protocol asks for"}

    def _balance(self, parts: tuple[str, ...], _: str, body: Any, now: float) -> tuple[int, Json]:
        match parts:
            case ("GET", "services", service, "hosts", host):
                view = self._hosts[service, host].view(now)
                return 200, {"state": view.state, "in_flight": view.in_flight}
            case ("POST", "services", service, "hosts", host, "drain" | "undrain" as do):
                state = self._hosts[service, host]
                if (do == "drain") == (state.drained_at is None):  # a change, not a repeat
                    state.drained_at = now if do == "drain" else None
                    self._events.append(Event(do, service, host, "", now))
                return 200, {"state": state.view(now).state}
            case ("GET", "services", service, "live"):
                return 200, {"colour": self._live[service]}
            case ("PUT", "services", service, "live") if service in self._live:
                colour = _field(body, "colour", lambda c: c in ("blue", "green"))
                if self._live[service] != colour:
                    self._live[service] = colour
                    self._events.append(Event("switch", service, "", colour, now))
                return 200, {"colour": colour}
            case ("GET", "flags", service, name):
                return 200, {"enabled": self._flags[service, name]}
            case ("PUT", "flags", service, name) if service in self._live:
                enabled = _field(body, "enabled", lambda e: isinstance(e, bool))
                if self._flags.get((service, name)) != enabled:
                    self._flags[service, name] = enabled
                    self._events.append(Event("flag", service, "", f"{name}={enabled}", now))
                return 200, {"enabled": enabled}
        raise KeyError(parts)

    def _agent(self, parts: tuple[str, ...], host: str, body: Any, now: float) -> tuple[int, Json]:
        match parts:
            case ("GET", "services", service):
                return 200, {"version": self._hosts[service, host].version}
            case ("PUT", "services", service) if (service, host) in self._hosts:
                version = _field(body, "version", lambda v: isinstance(v, str) and v != "")
                if self._hosts[service, host].version != version:
                    self._hosts[service, host].version = version
                    self._events.append(Event("deploy", service, host, version, now))
                return 200, {"version": version}
            case ("GET", "services", service, "health"):
                state = self._hosts[service, host]
                answer = {"version": state.version, "healthy": state.healthy}
                return (200 if state.healthy else 503), answer
        raise KeyError(parts)


def _field(body: Any, key: str, valid: Callable[[Any], bool]) -> Any:
    """``body[key]`` if ``body`` is an object and the value is ``valid``; else ValueError."""
    value = body.get(key) if isinstance(body, dict) else None
    if not valid(value):
        raise ValueError(f"{key}={value!r}")
    return value


def _stop(listener: _Listener) -> None:
    listener.shutdown()
    listener.server_close()
