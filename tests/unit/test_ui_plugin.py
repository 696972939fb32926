"""The UI plugin's app (plugins/fruitflow_airflow/ui_plugin.py) before any route runs: what a stranger
can reach, and what is refused before a request's body is read."""

import asyncio
from functools import partial

import pytest

from fruitflow_airflow import ui_plugin


@pytest.fixture(autouse=True)
def _small_photos(monkeypatch):
    """Photos of at most 1000 bytes: the app's guard then refuses bodies over 1000 + MULTIPART_OVERHEAD."""
    monkeypatch.setenv("FRUITFLOW_MAX_IMAGE_BYTES", "1000")


LIMIT = 1000 + ui_plugin.MULTIPART_OVERHEAD


def _call(headers, chunks):
    """One POST /recognise to the plugin's app as mounted (its middleware included): (status, how many
    body chunks were read)."""
    sent, read = [], []

    async def receive():
        chunk = chunks[len(read)] if len(read) < len(chunks) else b""
        read.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": len(read) < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/recognise", "raw_path": b"/recognise", "root_path": "",
             "query_string": b"", "headers": [(k.lower(), v) for k, v in headers], "scheme": "http",
             "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 5000), "http_version": "1.1"}
    asyncio.run(ui_plugin.app(scope, receive, send))
    return sent[0]["status"], len(read)


def test_the_api_description_and_swagger_page_are_not_served():
    """FastAPI serves /docs and /openapi.json without the app's dependencies: to anyone, and the Swagger
    page loads a script from a CDN into Airflow's origin."""
    from fastapi.testclient import TestClient

    client = TestClient(ui_plugin.app)
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert client.get(path).status_code == 404, path


def test_an_anonymous_upload_is_refused_before_its_body_is_read():
    status, read = _call([(b"content-type", b"multipart/form-data; boundary=x"),
                          (b"content-length", b"999999999")], [b"x" * 500] * 10)
    assert (status, read) == (401, 0)


@pytest.mark.parametrize("credentials", [(b"authorization", b"Bearer a.b.c"), (b"cookie", b"theme=dark; _token=a.b.c")])
def test_a_body_over_the_limit_is_refused_by_its_length_before_it_is_read(credentials):
    status, read = _call([credentials, (b"content-length", str(LIMIT + 1).encode())], [b"x" * 500] * 10)
    assert (status, read) == (413, 0)


def test_a_streamed_body_is_cut_off_once_it_passes_the_limit():
    """No Content-Length (chunked): read until the limit is passed, then refused."""
    head = b'--x\r\nContent-Disposition: form-data; name="photo"; filename="a.jpg"\r\n\r\n'
    status, read = _call([(b"authorization", b"Bearer a.b.c"), (b"content-type", b"multipart/form-data; boundary=x")],
                         [head + b"x" * 300] + [b"x" * (LIMIT // 2)] * 10)
    assert (status, read) == (413, 3)


def test_one_user_gets_a_bounded_number_of_recognitions_a_minute():
    now = [0.0]
    limit = ui_plugin.PerUserLimit(count=3, per_s=60, clock=lambda: now[0])
    assert [limit.allow("alice") for _ in range(4)] == [True, True, True, False]
    assert limit.allow("bob")  # another user has a window of their own
    now[0] = 59.9
    assert not limit.allow("alice")
    now[0] = 60.1  # the first three have left the window
    assert [limit.allow("alice") for _ in range(4)] == [True, True, True, False]


def test_the_recognise_page_answers_429_past_a_users_limit(monkeypatch):
    """Through the app with Airflow's access check and user stood in for: the user's third upload within
    the window is refused before any decoding or model work."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.responses import HTMLResponse
    from fastapi.testclient import TestClient

    class User:
        def get_id(self):
            return "alice"

    worked = []
    monkeypatch.setattr(ui_plugin, "RECOGNISE_PER_USER", ui_plugin.PerUserLimit(count=2, per_s=60))
    monkeypatch.setattr(ui_plugin, "_recognise", lambda photo: worked.append(photo) or HTMLResponse("ok"))
    access = ui_plugin.app.router.dependencies[0].dependency
    monkeypatch.setitem(ui_plugin.app.dependency_overrides, access, lambda: None)
    monkeypatch.setitem(ui_plugin.app.dependency_overrides, get_user, User)
    client = TestClient(ui_plugin.app)
    answers = [client.post("/recognise", files={"photo": ("a.jpg", b"x")}, headers={"Authorization": "Bearer t"})
               for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429] and len(worked) == 2
    assert "more than 2 photos in 60 s" in answers[2].text


def test_a_flood_of_uploads_leaves_the_api_server_answering(monkeypatch):
    """20 uploads at once: two recognitions run (held here mid-work, as a slow model would be), the others
    are turned away at once with 503, and meanwhile the app still answers another request. The work runs
    on FastAPI's thread pool: on the event loop, the held recognitions would stall every other request."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.responses import HTMLResponse
    from fastapi.testclient import TestClient

    class User:
        def get_id(self):
            return "alice"

    inside, release = threading.Semaphore(0), threading.Event()

    def held(photo):
        inside.release()
        release.wait(300)
        return HTMLResponse("recognised")

    monkeypatch.setattr(ui_plugin, "_recognise", held)
    monkeypatch.setattr(ui_plugin, "RECOGNISE_PER_USER", ui_plugin.PerUserLimit(count=20, per_s=60))
    access = ui_plugin.app.router.dependencies[0].dependency
    monkeypatch.setitem(ui_plugin.app.dependency_overrides, access, lambda: None)
    monkeypatch.setitem(ui_plugin.app.dependency_overrides, get_user, User)
    # one event loop for every request, as in the api-server (a bare TestClient gives each request its own)
    with TestClient(ui_plugin.app) as client, ThreadPoolExecutor(max_workers=21) as pool:
        upload = partial(client.post, "/recognise", files={"photo": ("a.jpg", b"x")},
                         headers={"Authorization": "Bearer t"})
        try:
            uploads = [pool.submit(upload) for _ in range(20)]
            assert inside.acquire(timeout=60) and inside.acquire(timeout=60)  # two recognitions under way
            deadline = time.monotonic() + 120
            while sum(u.done() for u in uploads) < 18 and time.monotonic() < deadline:  # the rest answered
                time.sleep(0.05)
            page = pool.submit(client.get, "/recognise").result(timeout=120)  # answered while two are held
            assert page.status_code == 200 and not inside.acquire(blocking=False)  # and no third started
            turned_away = sorted(u.result().status_code for u in uploads if u.done())
        finally:
            release.set()
        statuses = sorted(u.result(timeout=120).status_code for u in uploads)
    assert turned_away == [503] * 18 and statuses == [200] * 2 + [503] * 18


def test_an_api_server_without_the_control_key_serves_no_report(monkeypatch):
    """A report page and a summary that vouches for it, neither signed (what a Spark node can write under the
    runs prefix): an api-server whose key is missing answers 503 naming it, instead of serving the page."""
    import hashlib
    import json

    from fastapi.testclient import TestClient

    from fruitflow_airflow import run_report
    from spark_jobs.common import signing
    from spark_jobs.common.config import Config, split_s3_uri

    cfg = Config.from_env()
    page = "<html>planted</html>"
    objects = {split_s3_uri(run_report.report_html_uri(cfg, "r1")): page,
               split_s3_uri(run_report.summary_uri(cfg, "r1")): json.dumps(
                   {"run_id": "r1", "report_sha256": hashlib.sha256(page.encode()).hexdigest()})}

    class Store:  # the reports bucket, as S3Hook reads it
        def check_for_key(self, key, bucket):
            return (bucket, key) in objects

        def read_key(self, key, bucket):
            return objects[(bucket, key)]

    monkeypatch.delenv(signing.KEY_VARIABLE, raising=False)
    monkeypatch.setattr(ui_plugin, "_s3_hook", Store)
    access = ui_plugin.app.router.dependencies[0].dependency
    monkeypatch.setitem(ui_plugin.app.dependency_overrides, access, lambda: None)
    answer = TestClient(ui_plugin.app).get("/runs/r1/report")
    assert answer.status_code == 503 and signing.KEY_VARIABLE in answer.json()["detail"]
    assert "planted" not in answer.text


@pytest.mark.parametrize("role", [None, "viewer"], ids=["a user without access to the DAG's runs", "a viewer"])
def test_every_page_is_for_users_with_access_to_the_dags_runs(monkeypatch, role):
    """Airflow's own authorization decides, as in the api-server: its access check on the DAG's runs, asked
    of Airflow's SimpleAuthManager, for a logged-in user who has no role (the auth manager grants such a
    user nothing) and for a viewer. Every route of the app, whichever router adds it later."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api import security
    from airflow.models.dag import DagModel
    from fastapi.responses import HTMLResponse
    from fastapi.testclient import TestClient

    monkeypatch.setattr(security, "get_auth_manager", SimpleAuthManager)
    # without multi-team mode no DAG has a team (what the metadata DB would answer)
    monkeypatch.setattr(DagModel, "get_team_name", staticmethod(lambda dag_id, **_: None))
    monkeypatch.setitem(ui_plugin.app.dependency_overrides, security.get_user,
                        lambda: SimpleAuthManagerUser(username="someone", role=role))
    monkeypatch.setattr(ui_plugin, "_s3_hook", lambda: type("NoReports", (), {"check_for_key": lambda *a: False})())
    monkeypatch.setattr(ui_plugin, "_recognise", lambda photo: HTMLResponse("recognised"))
    client = TestClient(ui_plugin.app)
    answers = {}
    for route in ui_plugin.app.routes:
        for method in sorted(getattr(route, "methods", ()) - {"HEAD"}):
            path = route.path.replace("{run_id}", "a-run")
            files = {"photo": ("a.jpg", b"x")} if method == "POST" else None
            answers[(method, path)] = client.request(method, path, files=files,
                                                     headers={"Authorization": "Bearer t"}).status_code
    assert {("GET", "/runs/a-run/report"), ("GET", "/recognise"), ("POST", "/recognise")} <= set(answers)
    if role is None:
        assert set(answers.values()) == {403}, answers
    else:  # through the check: no report for that run, the form, a recognition
        assert answers == {("GET", "/runs/a-run/report"): 404, ("GET", "/recognise"): 200,
                           ("POST", "/recognise"): 200}, answers
