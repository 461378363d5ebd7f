"""The API client: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio),
with the same methods, for roomcast's HTTP API (docs/http-api.md).

Each method describes its call once (:class:`_Call`: method, path, body, how
to read the answer, whether a retry is safe); the two clients only differ in
how they send it. Safe calls (queries, and publishes that carry an
``idempotency_key``) are retried on transport errors and 502/503/504.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from .errors import RoomcastError, Timeout, TransportError, from_answer
from .types import (
    Bound,
    ConnectionInfo,
    Delivered,
    Health,
    HistoryPage,
    Presence,
    Publication,
    RoomSummary,
    Stats,
    UserCount,
    UsersPage,
    UserStatus,
)

T = TypeVar("T")

#: Statuses after which a safe call is retried.
RETRY_STATUSES = frozenset({502, 503, 504})
REPLAYED = "idempotent-replayed"


@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any, httpx.Headers], T]
    body: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    safe: bool = False


def _seg(s: str) -> str:
    return quote(s, safe="")


def _users(items: Any) -> list[UserCount]:
    return [UserCount(user=u["user"], connections=u["connections"], info=u.get("info")) for u in items]


def _delivered(body: Any, headers: httpx.Headers) -> Delivered:
    return Delivered(delivered=int(body["delivered"]), replayed=headers.get(REPLAYED) == "true")


def _count(key: str) -> Callable[[Any, httpx.Headers], int]:
    return lambda body, _h: int(body[key])


def _publication(p: dict[str, Any]) -> Publication:
    return Publication(
        room=p.get("room"),
        event=p["event"],
        data=p.get("data"),
        offset=p.get("offset"),
        epoch=p.get("epoch"),
        sender=p.get("from"),
    )


def _connection(body: Any, _h: httpx.Headers) -> ConnectionInfo:
    return ConnectionInfo(
        conn=body["conn"],
        online=bool(body.get("online")),
        user=body.get("user"),
        node=body.get("node"),
        rooms=list(body.get("rooms") or []),
        session=body.get("session"),
        info=body.get("info"),
        channel=body.get("channel"),
    )


def _target(user: str | None, conn: str | None) -> dict[str, str]:
    if (user is None) == (conn is None):
        raise ValueError("give exactly one of user= and conn=")
    return {"user": user} if user is not None else {"conn": conn}  # type: ignore[dict-item]


def _publish_body(data: Any, exclude_conn: str | None, idempotency_key: str | None, **fields: Any) -> dict[str, Any]:
    body = {**fields, "data": data}
    if exclude_conn is not None:
        body["exclude_conn"] = exclude_conn
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    return body


class _Calls:
    """Every call of the API, described once."""

    @staticmethod
    def publish(
        room: str, event: str, data: Any, exclude_conn: str | None, idempotency_key: str | None
    ) -> _Call[Delivered]:
        body = _publish_body(data, exclude_conn, idempotency_key, room=room, event=event)
        return _Call("POST", "/api/publish", _delivered, body, safe=idempotency_key is not None)

    @staticmethod
    def send(
        user: str | None, conn: str | None, event: str, data: Any, idempotency_key: str | None
    ) -> _Call[Delivered]:
        body = _publish_body(data, None, idempotency_key, event=event, **_target(user, conn))
        return _Call("POST", "/api/send", _delivered, body, safe=idempotency_key is not None)

    @staticmethod
    def broadcast(event: str, data: Any, idempotency_key: str | None) -> _Call[Delivered]:
        body = _publish_body(data, None, idempotency_key, event=event)
        return _Call("POST", "/api/broadcast", _delivered, body, safe=idempotency_key is not None)

    @staticmethod
    def join(room: str, user: str | None, conn: str | None) -> _Call[int]:
        return _Call("POST", "/api/join", _count("joined"), {"room": room, **_target(user, conn)})

    @staticmethod
    def leave(room: str, user: str | None, conn: str | None) -> _Call[int]:
        return _Call("POST", "/api/leave", _count("left"), {"room": room, **_target(user, conn)})

    @staticmethod
    def close_room(room: str) -> _Call[int]:
        return _Call("POST", "/api/close_room", _count("left"), {"room": room})

    @staticmethod
    def disconnect(user: str | None, conn: str | None, code: int | None, reason: str | None) -> _Call[int]:
        body: dict[str, Any] = dict(_target(user, conn))
        if code is not None:
            body["code"] = code
        if reason is not None:
            body["reason"] = reason
        return _Call("POST", "/api/disconnect", _count("disconnected"), body)

    @staticmethod
    def bind(conn: str, user: str) -> _Call[Bound]:
        def parse(b: Any, _h: httpx.Headers) -> Bound:
            return Bound(conn=b["conn"], user=b["user"], bound=bool(b["bound"]))

        # A repeat of a bind that happened answers bound=False: safe to retry.
        return _Call("POST", "/api/bind", parse, {"conn": conn, "user": user}, safe=True)

    @staticmethod
    def presence(room: str) -> _Call[Presence]:
        def parse(b: Any, _h: httpx.Headers) -> Presence:
            return Presence(
                room=b["room"], connections=b["connections"], users=_users(b["users"]), anonymous=b["anonymous"]
            )

        return _Call("GET", f"/api/presence/{_seg(room)}", parse, safe=True)

    @staticmethod
    def rooms() -> _Call[list[RoomSummary]]:
        def parse(b: Any, _h: httpx.Headers) -> list[RoomSummary]:
            return [RoomSummary(room=r["room"], connections=r["connections"], users=r["users"]) for r in b["rooms"]]

        return _Call("GET", "/api/rooms", parse, safe=True)

    @staticmethod
    def users(limit: int | None, cursor: str | None) -> _Call[UsersPage]:
        params: dict[str, Any] = {}
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor

        def parse(b: Any, _h: httpx.Headers) -> UsersPage:
            return UsersPage(users=_users(b["users"]), next_cursor=b.get("next_cursor"))

        return _Call("GET", "/api/users", parse, params=params, safe=True)

    @staticmethod
    def user(user: str) -> _Call[UserStatus]:
        def parse(b: Any, _h: httpx.Headers) -> UserStatus:
            return UserStatus(user=b["user"], online=bool(b["online"]), connections=list(b["connections"]))

        return _Call("GET", f"/api/users/{_seg(user)}", parse, safe=True)

    @staticmethod
    def connection(conn: str) -> _Call[ConnectionInfo]:
        return _Call("GET", f"/api/connections/{_seg(conn)}", _connection, safe=True)

    @staticmethod
    def history(room: str, since: int | None, epoch: str | None, limit: int | None) -> _Call[HistoryPage]:
        params = {k: v for k, v in {"since": since, "epoch": epoch, "limit": limit}.items() if v is not None}

        def parse(b: Any, _h: httpx.Headers) -> HistoryPage:
            return HistoryPage(
                room=b["room"],
                epoch=b.get("epoch"),
                offset=int(b.get("offset") or 0),
                complete=bool(b.get("complete")),
                publications=[_publication(p) for p in b.get("publications", [])],
            )

        return _Call("GET", f"/api/history/{_seg(room)}", parse, params=params, safe=True)

    @staticmethod
    def delete_history(room: str) -> _Call[bool]:
        return _Call("DELETE", f"/api/history/{_seg(room)}", lambda b, _h: bool(b["removed"]), safe=True)

    @staticmethod
    def stats() -> _Call[Stats]:
        def parse(b: Any, _h: httpx.Headers) -> Stats:
            return Stats(
                connections=b["connections"], users=b["users"], rooms=b["rooms"], node=b["node"], nodes=b["nodes"]
            )

        return _Call("GET", "/api/stats", parse, safe=True)

    @staticmethod
    def health() -> _Call[Health]:
        return _Call("GET", "/healthz", lambda b, _h: Health(status=b["status"], reason=b.get("reason")), safe=True)


class _Base:
    def __init__(self, url: str, api_key: str | None, timeout: float, retries: int, backoff: float) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key or None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "roomcast-python"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _attempts(self, call: _Call[Any]) -> int:
        return 1 + (self.retries if call.safe else 0)

    @staticmethod
    def _read(call: _Call[T], response: httpx.Response) -> T:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            raise from_answer(response.status_code, body)
        if body is None:
            raise RoomcastError(f"{call.method} {call.path}: an answer that is not JSON", status=response.status_code)
        return call.parse(body, response.headers)

    @staticmethod
    def _transport(call: _Call[Any], e: httpx.TransportError) -> RoomcastError:
        what = f"{call.method} {call.path}: {e}"
        return Timeout(what) if isinstance(e, httpx.TimeoutException) else TransportError(what)


class Client(_Base):
    """A blocking client of roomcast's HTTP API.

    ``Client("http://127.0.0.1:8700", api_key=...)``, or :meth:`from_env`.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8700",
        api_key: str | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff)
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=self._headers(), transport=transport)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        """A client for ``ROOMCAST_URL`` (default http://127.0.0.1:8700) with ``ROOMCAST_API_KEY``."""
        return cls(
            os.environ.get("ROOMCAST_URL", "http://127.0.0.1:8700"), os.environ.get("ROOMCAST_API_KEY"), **kwargs
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call[T]) -> T:
        attempts = self._attempts(call)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._http.request(call.method, call.path, json=call.body, params=call.params)
            except httpx.TransportError as e:
                if last:
                    raise self._transport(call, e) from e
            else:
                if last or response.status_code not in RETRY_STATUSES:
                    return self._read(call, response)
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def publish(
        self,
        room: str,
        event: str,
        data: Any = None,
        *,
        exclude_conn: str | None = None,
        idempotency_key: str | None = None,
    ) -> Delivered:
        """Publishes to a room's members (docs/http-api.md#post-apipublish--to-a-room)."""
        return self._run(_Calls.publish(room, event, data, exclude_conn, idempotency_key))

    def send(
        self,
        event: str,
        data: Any = None,
        *,
        user: str | None = None,
        conn: str | None = None,
        idempotency_key: str | None = None,
    ) -> Delivered:
        """Sends to every connection of ``user``, or to the connection ``conn``."""
        return self._run(_Calls.send(user, conn, event, data, idempotency_key))

    def broadcast(self, event: str, data: Any = None, *, idempotency_key: str | None = None) -> Delivered:
        """Sends to every connection."""
        return self._run(_Calls.broadcast(event, data, idempotency_key))

    def join(self, room: str, *, user: str | None = None, conn: str | None = None) -> int:
        """Puts every connection of ``user`` (or ``conn``) into ``room``; returns how many here."""
        return self._run(_Calls.join(room, user, conn))

    def leave(self, room: str, *, user: str | None = None, conn: str | None = None) -> int:
        """Takes every connection of ``user`` (or ``conn``) out of ``room``."""
        return self._run(_Calls.leave(room, user, conn))

    def close_room(self, room: str) -> int:
        """Takes every member out of ``room``."""
        return self._run(_Calls.close_room(room))

    def disconnect(
        self, *, user: str | None = None, conn: str | None = None, code: int | None = None, reason: str | None = None
    ) -> int:
        """Closes every connection of ``user`` (or ``conn``), with a close code 4000-4999."""
        return self._run(_Calls.disconnect(user, conn, code, reason))

    def bind(self, *, conn: str, user: str) -> Bound:
        """Makes the anonymous connection ``conn`` the user's."""
        return self._run(_Calls.bind(conn, user))

    def presence(self, room: str) -> Presence:
        """Who is in ``room``."""
        return self._run(_Calls.presence(room))

    def rooms(self) -> list[RoomSummary]:
        """Every room with members."""
        return self._run(_Calls.rooms())

    def users(self, *, limit: int | None = None, cursor: str | None = None) -> UsersPage:
        """One page of the online users of the cluster."""
        return self._run(_Calls.users(limit, cursor))

    def user(self, user: str) -> UserStatus:
        """Whether ``user`` is online, and its connections."""
        return self._run(_Calls.user(user))

    def connection(self, conn: str) -> ConnectionInfo:
        """One connection: user, node, rooms, session, info."""
        return self._run(_Calls.connection(conn))

    def history(
        self, room: str, *, since: int | None = None, epoch: str | None = None, limit: int | None = None
    ) -> HistoryPage:
        """What ``room``'s history holds after offset ``since``."""
        return self._run(_Calls.history(room, since, epoch, limit))

    def delete_history(self, room: str) -> bool:
        """Forgets ``room``'s history."""
        return self._run(_Calls.delete_history(room))

    def stats(self) -> Stats:
        """Cluster totals and nodes."""
        return self._run(_Calls.stats())

    def health(self) -> Health:
        """``/healthz`` of the node."""
        return self._run(_Calls.health())


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: the same methods, awaited."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8700",
        api_key: str | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=self._headers(), transport=transport)

    @classmethod
    def from_env(cls, **kwargs: Any) -> AsyncClient:
        """A client for ``ROOMCAST_URL`` (default http://127.0.0.1:8700) with ``ROOMCAST_API_KEY``."""
        return cls(
            os.environ.get("ROOMCAST_URL", "http://127.0.0.1:8700"), os.environ.get("ROOMCAST_API_KEY"), **kwargs
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call[T]) -> T:
        attempts = self._attempts(call)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._http.request(call.method, call.path, json=call.body, params=call.params)
            except httpx.TransportError as e:
                if last:
                    raise self._transport(call, e) from e
            else:
                if last or response.status_code not in RETRY_STATUSES:
                    return self._read(call, response)
            await asyncio.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def publish(
        self,
        room: str,
        event: str,
        data: Any = None,
        *,
        exclude_conn: str | None = None,
        idempotency_key: str | None = None,
    ) -> Delivered:
        return await self._run(_Calls.publish(room, event, data, exclude_conn, idempotency_key))

    async def send(
        self,
        event: str,
        data: Any = None,
        *,
        user: str | None = None,
        conn: str | None = None,
        idempotency_key: str | None = None,
    ) -> Delivered:
        return await self._run(_Calls.send(user, conn, event, data, idempotency_key))

    async def broadcast(self, event: str, data: Any = None, *, idempotency_key: str | None = None) -> Delivered:
        return await self._run(_Calls.broadcast(event, data, idempotency_key))

    async def join(self, room: str, *, user: str | None = None, conn: str | None = None) -> int:
        return await self._run(_Calls.join(room, user, conn))

    async def leave(self, room: str, *, user: str | None = None, conn: str | None = None) -> int:
        return await self._run(_Calls.leave(room, user, conn))

    async def close_room(self, room: str) -> int:
        return await self._run(_Calls.close_room(room))

    async def disconnect(
        self, *, user: str | None = None, conn: str | None = None, code: int | None = None, reason: str | None = None
    ) -> int:
        return await self._run(_Calls.disconnect(user, conn, code, reason))

    async def bind(self, *, conn: str, user: str) -> Bound:
        return await self._run(_Calls.bind(conn, user))

    async def presence(self, room: str) -> Presence:
        return await self._run(_Calls.presence(room))

    async def rooms(self) -> list[RoomSummary]:
        return await self._run(_Calls.rooms())

    async def users(self, *, limit: int | None = None, cursor: str | None = None) -> UsersPage:
        return await self._run(_Calls.users(limit, cursor))

    async def user(self, user: str) -> UserStatus:
        return await self._run(_Calls.user(user))

    async def connection(self, conn: str) -> ConnectionInfo:
        return await self._run(_Calls.connection(conn))

    async def history(
        self, room: str, *, since: int | None = None, epoch: str | None = None, limit: int | None = None
    ) -> HistoryPage:
        return await self._run(_Calls.history(room, since, epoch, limit))

    async def delete_history(self, room: str) -> bool:
        return await self._run(_Calls.delete_history(room))

    async def stats(self) -> Stats:
        return await self._run(_Calls.stats())

    async def health(self) -> Health:
        return await self._run(_Calls.health())
