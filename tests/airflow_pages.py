"""The Airflow UI as a person uses it, for the end-to-end tests: its REST API and the plugin's pages over
HTTP (errors included), and in a real browser (tests/browser.py) the log-in page, the DAG's trigger form,
a run's "Fruit report" tab and the "Recognise a fruit" page."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from fruitflow_airflow import DAG_ID
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from fruitflow import airflow_ui
from tests import browser

BASE = airflow_ui.url()


def page(method, path, token=None, body=None, content_type=None):
    """(status, headers, text) of a plugin page, errors included."""
    request = urllib.request.Request(BASE + path, method=method, data=body)
    if content_type:
        request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def multipart(name, filename, data):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def wait(what, check, timeout, every=3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def log_in(driver, password):
    driver.get(BASE + "/")
    WebDriverWait(driver, 60).until(ec.visibility_of_element_located((By.NAME, "username"))).send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 60).until(lambda d: "/auth/login" not in d.current_url)


def _set_field(driver, name, value):
    field = driver.find_element(By.NAME, name)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(value)


def trigger_from_the_form(driver, screens, raw_prefix, n_clusters) -> str:
    """The DAG's Trigger button, its Params form (the trigger form Airflow draws from the Params' JSON
    schema), then the run page it opens: returns that run's id."""
    driver.get(f"{BASE}/dags/{DAG_ID}")
    WebDriverWait(driver, 60).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))
                                    ).click()
    WebDriverWait(driver, 60).until(ec.visibility_of_element_located((By.NAME, "element_raw_prefix")))
    assert driver.find_element(By.NAME, "element_backbone").get_attribute("value") == "auto"
    _set_field(driver, "element_raw_prefix", raw_prefix)
    _set_field(driver, "element_n_clusters", str(n_clusters))
    screens.shot("trigger-form")
    driver.find_element(By.XPATH, "(//button[normalize-space()='Trigger'])[last()]").click()
    WebDriverWait(driver, 60).until(lambda d: f"/dags/{DAG_ID}/runs/" in d.current_url)
    screens.shot("run-triggered")
    return urllib.parse.unquote(driver.current_url.split("/runs/", 1)[1].split("/", 1)[0])


def report_tab(driver, screens, run_id, n_clusters):
    """The run page's "Fruit report" tab: the plugin's page in Airflow's frame, as a person sees it."""
    driver.get(f"{BASE}/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id, safe='')}")
    WebDriverWait(driver, 60).until(ec.element_to_be_clickable((By.XPATH, "//*[normalize-space()='Fruit report']"))
                                    ).click()
    frame = WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.TAG_NAME, "iframe")))
    driver.switch_to.frame(frame)
    try:
        WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.ID, "quality")))
        quality = {row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
                   for row in driver.find_elements(By.CSS_SELECTOR, "#quality tr")}
        assert {"ari", "nmi", "silhouette"} <= set(quality), quality
        clusters = driver.find_elements(By.CSS_SELECTOR, "tr.cluster")
        assert len(clusters) == n_clusters
        for row in clusters:  # one strip of member thumbnails per cluster, each decoded by the browser
            thumbs = browser.images_loaded(driver, "td.thumbs img", row)
            assert thumbs and all(t["complete"] and t["width"] > 0 for t in thumbs), thumbs
        figures = browser.images_loaded(driver, "figure img")
        assert len(figures) == 6 and all(f["width"] > 0 for f in figures), figures
        driver.execute_script("window.scrollTo(0, 0)")
    finally:
        driver.switch_to.default_content()
    screens.shot("report-tab")


def recognise_page(driver, screens, photo, trained):
    """"Recognise a fruit" from the navigation: upload a photo, see the top 3 and the nearest photos."""
    driver.get(BASE + "/")
    nav_entry = "//*[starts-with(@aria-label, 'Recogni') or normalize-space()='Recognise a fruit']"
    WebDriverWait(driver, 60).until(ec.element_to_be_clickable((By.XPATH, nav_entry))).click()
    frame = WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.TAG_NAME, "iframe")))
    driver.switch_to.frame(frame)
    try:
        WebDriverWait(driver, 60).until(ec.presence_of_element_located((By.NAME, "photo"))).send_keys(str(photo))
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(driver, 120).until(ec.presence_of_element_located((By.ID, "top")))
        top = [row.find_element(By.TAG_NAME, "td").text for row in driver.find_elements(By.CSS_SELECTOR, "#top tr")[1:]]
        assert driver.find_element(By.ID, "fruit").text == top[0] and len(top) == 3 and set(top) <= set(trained), top
        neighbours = browser.images_loaded(driver, "#neighbours img")
        assert neighbours and all(n["width"] > 0 for n in neighbours), neighbours
    finally:
        driver.switch_to.default_content()
    screens.shot("recognise")
