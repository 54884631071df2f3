"""The front door: request a ride over HTTP, ask what became of it, and watch the pipeline on a live page.

    POST /rides            a ride request (JSON) -> 202 {"ride_id", "status", "status_url"} once Kafka has it
    GET  /rides/{ride_id}  requested, confirmed (driver, ETA, fare) or rejected (reason), with the time of each
    GET  /stats            analysis.py's live statistics, read from its ride_stats topic
    GET  /                 the live page: the map, rides per minute, busiest zones, rejections, lag, a form
    GET  /events           what the page shows, once a second (server-sent events)
    GET  /healthz, /metrics

Guarantee: a POST answered 202 is in ride_details (idempotent producer, acks=all: as rides.py). A retried POST
with the same Idempotency-Key (or the same client-chosen ride_id) answers with the same ride and publishes
nothing new; the same key with a different request is a 409. Anything else not accepted (a 422, 413 or 503)
published nothing. The statuses come from a view each instance keeps by reading the topics (common.follow),
so any number of instances answer the same.
"""

from __future__ import annotations

import common.stdlib_email  # noqa: F401  (first: the project's email.py shadows the stdlib `email` package)

# isort: split
import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import Receive, Scope, Send

from common import city, cli, front, schemas, topics
from common.schemas import Email, Identifier, Latitude, Longitude, PersonName, RideRequest
from common.settings import ApiSettings
from common.view import REQUESTED, identity

WEB = Path(__file__).resolve().parent / "web"  # the live page's files, served by this service (no CDN)
MAX_BODY = 64 * 1024  # a ride request is a few hundred bytes
# ride_id = uuid5(this, customer_id + Idempotency-Key): the same key of the same customer is the same ride, on
# any instance, with no shared state but the topics.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5f0d3c3e-8a52-4c57-9d0e-6b1a7e2f4c10")
RETRY_AFTER = "2"  # seconds, with a 503: Kafka outages here last seconds (a broker restart)
CATCHING_UP = "catching up with the topics after a start: the view does not know every recent ride yet"


# ------------------------------------------------------------------------------------------ the domain


class Point(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)  # "40.7" or true is no latitude

    lat: Latitude
    lon: Longitude


class RideForm(BaseModel):
    """POST /rides' body: a ride request's own fields, less what the service assigns (zones, requested_at).
    Unknown fields are refused: a misspelt one would otherwise be dropped without a word."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_max_length=1000, strict=True)

    ride_id: uuid.UUID | None = None
    customer_id: Identifier
    customer_email: Email
    customer_name: PersonName
    pickup: Point
    dropoff: Point
    passengers: Annotated[int, Field(ge=1, le=8)] = 1


def form_problem(error: ValidationError) -> str:
    """What is wrong with a POST's body, in one line naming each field: pydantic's words, except for a pattern's
    regex, which would say little to a client."""
    parts = []
    for e in error.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {'not in the expected format' if e['type'] == 'string_pattern_mismatch' else e['msg']}")
    return schemas.one_line("; ".join(parts))


def idempotency_problem(key: str | None) -> str | None:
    """Why an Idempotency-Key header cannot be used, or None."""
    if key is not None and not (1 <= len(key) <= 255 and key.isascii() and key.isprintable()):
        return "Idempotency-Key: must be 1 to 255 printable ASCII characters"
    return None


def ride_id_for(form: RideForm, idempotency_key: str | None) -> uuid.UUID:
    """The client's ride_id; else one derived from its Idempotency-Key (a retry gets the same); else a new one."""
    if form.ride_id is not None:
        return form.ride_id
    if idempotency_key is not None:
        return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{form.customer_id}\n{idempotency_key}")
    return uuid.uuid4()


def request_of(form: RideForm, ride_id: uuid.UUID, now: datetime) -> RideRequest:
    """The ride request to publish: the form's fields, the service's zones for its points, the time now."""
    return RideRequest(ride_id=ride_id, customer_id=form.customer_id, customer_email=form.customer_email,
                       customer_name=form.customer_name, passengers=form.passengers, requested_at=now,
                       pickup=_place(form.pickup), dropoff=_place(form.dropoff))


def _place(point: Point) -> schemas.Place:
    return schemas.Place(lat=point.lat, lon=point.lon, zone=city.zone_of(point.lat, point.lon))


def accepted(ride_id: str, status: str, **headers: str) -> Response:
    """202 {"ride_id", "status", "status_url"}: the bytes JSONResponse would render for that dict (a ride_id is
    a UUID's canonical text, a status a plain word: nothing to escape), written directly (the hot path)."""
    body = f'{{"ride_id":"{ride_id}","status":"{status}","status_url":"/rides/{ride_id}"}}'.encode()
    return Response(body, status_code=202, headers={"Location": f"/rides/{ride_id}", **headers},
                    media_type="application/json")


def summary(tally) -> str:
    return tally.line(*front.OUTCOMES)


# ------------------------------------------------------------------------------------------ the service


def problem(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


class RidesApi(FastAPI):
    """FastAPI, except that the hot path, POST /rides with a Content-Length within MAX_BODY, is answered before
    Starlette's middleware and router, which cost a third of the service's CPU under load (bench/api.py's
    profile): the very handler, `answer`, run as the route below runs it. Any other POST /rides (no
    Content-Length, chunked, over MAX_BODY: the 413s) and every other request go through FastAPI as usual."""

    answer: Callable[[bytes, str | None, str | None], Awaitable[Response]] | None = None
    # The names a request may call this service by (its Host header), or None for any: served on loopback, only
    # loopback's, so that a web page whose domain an attacker points at 127.0.0.1 (DNS rebinding) is refused.
    hosts: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        length: int | None = None
        key: str | None = None
        content_type: str | None = None
        host = ""
        for name, value in scope["headers"]:  # lower-case names (ASGI); the first of each, as Starlette reads them
            if name == b"content-length" and length is None:
                length = int(value) if value.isdigit() else -1
            elif name == b"idempotency-key" and key is None:
                key = value.decode("latin-1")
            elif name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
            elif name == b"host" and not host:
                host = value.decode("latin-1")
            elif name == b"transfer-encoding":
                length = -1
        if self.hosts is not None and hostname(host) not in self.hosts:
            response: Response = problem(400, f"this service answers to {', '.join(sorted(self.hosts))}, not to "
                                              f"{host[:100]!r}")
            return await response(scope, receive, send)
        if self.answer is None or scope["path"] != "/rides" or scope["method"] != "POST" or length is None \
                or not 0 <= length <= MAX_BODY:
            return await super().__call__(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nobody to answer (it may have sent nothing, or part of a body)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        response = await self.answer(b"".join(chunks), key, content_type)
        await response(scope, receive, send)


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def hostname(host: str) -> str:
    """A Host header's name, without its port: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:8000" -> "::1"."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def make_app(door: front.Door) -> FastAPI:
    app = RidesApi(title="Rides on Kafka", max_body_size=MAX_BODY, docs_url="/docs", redoc_url=None)
    view = door.view
    latency = Histogram("rides_api_request_seconds", "POST /rides, from its body read to its answer", ["code"],
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
                        registry=door.watch.registry)
    observe: dict[int, Callable[[float], None]] = {}  # per status code: its histogram's observe

    async def answer(body: bytes, key: str | None, content_type: str | None) -> Response:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await _post(door, body, key, content_type)
        code = response.status_code
        if code not in observe:
            observe[code] = latency.labels(str(code)).observe
        observe[code](loop.time() - started)
        return response

    app.answer = answer
    app.hosts = LOOPBACK if door.settings.host in LOOPBACK else None

    @app.post("/rides", status_code=202)
    async def post_ride(request: Request) -> Response:
        return await answer(await request.body(), request.headers.get("idempotency-key"),
                            request.headers.get("content-type"))

    @app.get("/rides/{ride_id}")
    async def get_ride(ride_id: str) -> Response:
        try:
            known = view.ride(str(uuid.UUID(ride_id)))
        except ValueError:
            known = None
        if known:
            return JSONResponse(known)
        if not door.ready():
            return problem(503, CATCHING_UP, **{"Retry-After": RETRY_AFTER})
        return problem(404, f"no ride {ride_id[:80]!r} is known here")

    @app.get("/stats")
    async def get_stats(group: str | None = None) -> dict:
        return view.public_stats(datetime.now(timezone.utc), group)

    @app.get("/events", response_class=EventSourceResponse)
    async def events() -> AsyncIterator[ServerSentEvent]:
        while not door.stopping.is_set():
            yield ServerSentEvent(event="live", data=view.live(datetime.now(timezone.utc)), retry=2000)
            try:
                await asyncio.wait_for(door.stopping.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass

    @app.get("/city")
    async def get_city() -> Response:
        return FileResponse(city.DATA, media_type="application/geo+json")  # the zones the map draws

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        healthy, why = door.watch.health.status()
        if healthy and not door.ready():
            healthy, why = False, CATCHING_UP
        return PlainTextResponse(f"{why}\n", status_code=200 if healthy else 503, headers={"Cache-Control": "no-store"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(door.watch.registry), media_type=CONTENT_TYPE_LATEST)

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return app


async def _post(door: front.Door, body: bytes, key: str | None, content_type: str | None) -> Response:
    """POST /rides: validate, derive the ride_id, answer a retry from the view, else publish and wait for Kafka."""
    if content_type is None or content_type.partition(";")[0].strip().lower() != "application/json":
        # Not only hygiene: a web page on another site may send text/plain or a form to 127.0.0.1 without asking
        # (no CORS preflight); JSON it may not.
        door.tally["invalid"] += 1
        return problem(415, "Content-Type must be application/json")
    try:
        form = RideForm.model_validate_json(body)
    except ValidationError as e:
        door.tally["invalid"] += 1
        return problem(422, form_problem(e))
    if why := idempotency_problem(key):
        door.tally["invalid"] += 1
        return problem(422, why)
    if not door.ready():
        door.tally["unavailable"] += 1
        return problem(503, CATCHING_UP, **{"Retry-After": RETRY_AFTER})
    ride = request_of(form, ride_id_for(form, key), datetime.now(timezone.utc))
    ride_id = str(ride.ride_id)
    while (under_way := door.pending.get(ride_id)) is not None:  # the same ride is being published: wait for it
        try:
            if not under_way.done():
                await asyncio.shield(under_way)
            else:  # done, and its callbacks (the view's update, pending's clean-up) due: let them run first
                under_way.result()
                await asyncio.sleep(0)  # (awaiting a done future does not yield: this loop would spin for good)
        except front.Unavailable as e:
            door.tally["unavailable"] += 1
            return problem(503, str(e), **{"Retry-After": RETRY_AFTER})
    known = door.view.identity_of(ride_id)
    if known is not None:
        if known != identity(ride):
            door.tally["conflicts"] += 1
            return problem(409, f"ride {ride_id} was already requested with a different request (Idempotency-Key "
                                f"or ride_id reused)")
        door.tally["replayed"] += 1
        status = (door.view.ride(ride_id) or {}).get("status", REQUESTED)
        return accepted(ride_id, status, **{"Idempotent-Replayed": "true"})
    record = ride_id.encode(), schemas.encode(ride)  # (schemas.ride_key(ride.ride_id), the request)
    try:
        publication = door.publication(topics.RIDE_DETAILS, *record)
    except front.Unavailable as e:
        door.tally["unavailable"] += 1
        return problem(503, str(e), **{"Retry-After": RETRY_AFTER})
    door.pending[ride_id] = publication
    # Registered before anyone awaits it, so it runs first: the view knows the ride the moment Kafka has it, and a
    # retry arriving from then on is a replay, not a second publication.
    publication.add_done_callback(functools.partial(_published, door, ride, record))
    try:
        await asyncio.shield(publication)  # shielded: a client that hangs up does not cancel it for the others
    except front.Unavailable as e:
        door.tally["unavailable"] += 1
        return problem(503, str(e), **{"Retry-After": RETRY_AFTER})
    door.tally["accepted"] += 1
    return accepted(ride_id, REQUESTED)


def _published(door: front.Door, ride: RideRequest, record: tuple[bytes, bytes], publication: asyncio.Future) -> None:
    ride_id = str(ride.ride_id)
    if door.pending.get(ride_id) is publication:
        del door.pending[ride_id]
    if not publication.cancelled() and publication.exception() is None:
        door.view.requested(ride, record)  # the follower reads the same record later, and skips it


# ------------------------------------------------------------------------------------------ the script


def main(argv: list[str] | None = None) -> int:
    settings = cli.load(ApiSettings, argv, __doc__)
    return front.run(settings, make_app, summary)


if __name__ == "__main__":
    cli.run(main)
