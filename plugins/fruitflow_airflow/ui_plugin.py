"""fruitflow inside the Airflow UI (Airflow >= 3.1 plugin): a FastAPI app on the api-server under
/fruitflow, and two entries in the UI that open its pages.

- "Fruit report" on each run of `fruit_pipeline` (an external view on the DAG run page): the run's
  self-contained report page, which `publish` stored beside the run summary.
- "Recognise a fruit" in the navigation: upload a photo, see the top-3 fruits, the nearest cluster and
  the nearest training photos, from the latest trained run (`fruitflow classify`'s code, no Spark).

Airflow does not protect a plugin's endpoints by itself: every route here depends on Airflow's own
authentication (the UI's session cookie or a bearer token, the same JWT) and on read access to the
DAG's runs; an anonymous request gets 401 or 403. Pages send a Content-Security-Policy that allows no
script and inline images only. Nothing heavy is imported until a page is asked for.
"""

from __future__ import annotations

import collections
import json
import tempfile
import threading
import time
from pathlib import Path

from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, File, HTTPException, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse

from fruitflow_airflow import AWS_CONN_ID, DAG_ID
from fruitflow_airflow.run_report import PLUGIN_PREFIX
from spark_jobs.common.signing import NoKey

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# No /docs, /redoc or /openapi.json: FastAPI serves them without the app's dependencies (unauthenticated),
# and its Swagger page would load a script from a CDN into Airflow's origin.
app = FastAPI(title="fruitflow", description=f"{DAG_ID}'s reports and fruit recognition",
              dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))],
              docs_url=None, redoc_url=None, openapi_url=None)
# Headroom for the multipart envelope around one photo of at most Config.max_image_bytes.
MULTIPART_OVERHEAD = 64 * 1024


class BodyGuard:
    """ASGI middleware ahead of FastAPI's parsing. FastAPI reads a request's multipart body (Starlette
    spools file parts to disk, unbounded) before the app's dependencies check who is asking: a request
    with a body is refused here when it carries no credentials at all (no bearer token, no UI session
    cookie), when its Content-Length is over the limit, or as soon as its streamed bytes pass it."""

    def __init__(self, app):
        self.app = app

    @property
    def limit(self) -> int:
        return _config().max_image_bytes + MULTIPART_OVERHEAD

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        cookies = headers.get(b"cookie", b"").decode("latin-1")
        if not headers.get(b"authorization", b"").lower().startswith(b"bearer ") and not any(
                part.strip().startswith(f"{COOKIE_NAME_JWT_TOKEN}=") for part in cookies.split(";")):
            return await _refuse(send, 401, "Not authenticated")
        limit = self.limit
        length = headers.get(b"content-length", b"")
        if length and (not length.isdigit() or int(length) > limit):
            return await _refuse(send, 413, f"request body over {limit} bytes")
        seen, over = 0, False

        async def counted():
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                over = True
                raise _BodyTooLarge  # ends the parsing, whatever the app then answers
            return message

        async def unless_over(message):
            if not over:  # the app's answer to a body it could not finish reading is replaced below
                await send(message)

        try:
            await self.app(scope, counted, unless_over)
        except _BodyTooLarge:
            pass
        if over:
            await _refuse(send, 413, f"request body over {limit} bytes")


class _BodyTooLarge(Exception):
    pass


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


app.add_middleware(BodyGuard)


@app.exception_handler(NoKey)
def _without_the_control_key(request, exc: NoKey) -> JSONResponse:
    """An api-server without the control key serves nothing the Spark nodes could have planted."""
    return JSONResponse({"detail": str(exc)}, status_code=503)


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _s3_hook():
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=AWS_CONN_ID)


def _config():
    from spark_jobs.common.config import Config

    return Config.from_env()


@app.get("/runs/{run_id}/report", response_class=HTMLResponse)
def run_report(run_id: str) -> HTMLResponse:
    from fruitflow_airflow import run_report as pages

    try:
        page = pages.read(_s3_hook(), _config(), run_id)
    except ValueError as exc:  # a run id that names no folder of its own
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    if page is None:
        raise HTTPException(status_code=404, detail=f"no report for run {run_id!r}: the run has not finished, "
                                                    "found nothing new, or failed before publishing")
    return _page(page)


_CLASSIFIERS: dict[str, object] = {}  # summary URI -> loaded Classifier (the newest run's, normally one)
_CLASSIFIERS_LOCK = threading.Lock()  # recognitions run on several threads: one loads, the other waits


def _classifier():
    from spark_jobs.common import signing
    from spark_jobs.common.classifier import Classifier, BucketReader, latest_pointer

    cfg = _config()
    reader = BucketReader(cfg, _s3_hook().get_conn())
    pointer = latest_pointer(reader)
    if pointer is None:
        return None
    summary = signing.loads(reader.get(pointer), "latest-run pointer")["summary"]
    with _CLASSIFIERS_LOCK:
        if summary not in _CLASSIFIERS:
            _CLASSIFIERS.clear()
            _CLASSIFIERS[summary] = Classifier.load(summary, cfg, threads=1, client=reader.client)
        return _CLASSIFIERS[summary]


@app.get("/recognise", response_class=HTMLResponse)
def recognise_form() -> HTMLResponse:
    from fruitflow_airflow.recognise_page import render

    return _page(render(result=None, thumbnails={}, source=None))


# Recognitions at once on the api-server, each on one ONNX Runtime thread. One more is answered "busy" at
# once: waiting for a slot would hold a thread of the pool that Airflow's own endpoints run on.
RECOGNISE_SLOTS = threading.BoundedSemaphore(2)


class PerUserLimit:
    """At most `count` requests per user in any `per_s` seconds (a sliding window): one user's loop of
    uploads cannot hold the recognition slots that every other user shares."""

    def __init__(self, count: int, per_s: float, clock=time.monotonic):
        self.count, self.per_s, self.clock = count, per_s, clock
        self._seen: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def allow(self, user: str) -> bool:
        now = self.clock()
        with self._lock:
            seen = self._seen.setdefault(user, collections.deque())
            while seen and seen[0] <= now - self.per_s:
                seen.popleft()
            if len(seen) >= self.count:
                return False
            seen.append(now)
            # users with nothing in their window are forgotten now and then (memory stays bounded)
            if len(self._seen) > 1024:
                self._seen = {u: s for u, s in self._seen.items() if s and s[-1] > now - self.per_s}
            return True


RECOGNISE_PER_USER = PerUserLimit(count=20, per_s=60)


@app.post("/recognise", response_class=HTMLResponse)
def recognise(user: GetUserDep, photo: UploadFile = File(...)) -> HTMLResponse:
    """A plain `def`: FastAPI runs it on its thread pool, never on the api-server's event loop (the model's
    loading, the decoding and the inference block)."""
    from fruitflow_airflow.recognise_page import render

    if not RECOGNISE_PER_USER.allow(user.get_id()):
        return _page(render(result={"error": f"more than {RECOGNISE_PER_USER.count} photos in "
                                             f"{RECOGNISE_PER_USER.per_s:.0f} s: try again in a moment"},
                            thumbnails={}, source=None), 429)
    if not RECOGNISE_SLOTS.acquire(blocking=False):
        return _page(render(result={"error": "busy recognising other photos: try again in a moment"},
                            thumbnails={}, source=None), 503)
    try:
        return _recognise(photo)
    finally:
        RECOGNISE_SLOTS.release()


def _recognise(photo: UploadFile) -> HTMLResponse:
    from spark_jobs.common.classifier import NoModel
    from fruitflow_airflow.recognise_page import neighbour_thumbnails, render

    cfg = _config()
    data = photo.file.read(cfg.max_image_bytes + 1)
    if len(data) > cfg.max_image_bytes:
        return _page(render(result={"error": f"file larger than {cfg.max_image_bytes} bytes"}, thumbnails={},
                            source=None), 413)
    try:
        classifier = _classifier()
    except NoModel as exc:
        return _page(render(result={"error": str(exc)}, thumbnails={}, source=None), 503)
    if classifier is None:
        return _page(render(result={"error": f"no trained run yet: run {DAG_ID} first"}, thumbnails={},
                            source=None), 503)
    with tempfile.TemporaryDirectory(prefix="fruitflow-upload-") as tmp:
        path = Path(tmp) / "photo"
        path.write_bytes(data)
        result = classifier.predict([path])[0]
    result["path"] = photo.filename or "photo"
    thumbnails = neighbour_thumbnails(classifier, result, cfg, _s3_hook()) if "error" not in result else {}
    return _page(render(result=result, thumbnails=thumbnails, source=classifier.source))


class FruitflowUiPlugin(AirflowPlugin):
    name = "fruitflow"
    fastapi_apps = [{"app": app, "url_prefix": PLUGIN_PREFIX, "name": "fruitflow"}]
    external_views = [
        {"name": "Fruit report", "href": f"{PLUGIN_PREFIX.lstrip('/')}/runs/{{RUN_ID}}/report",
         "destination": "dag_run", "url_route": "fruitflow_report"},
        {"name": "Recognise a fruit", "href": f"{PLUGIN_PREFIX.lstrip('/')}/recognise", "destination": "nav",
         "url_route": "fruitflow_recognise"},
    ]
