"""The dashboard, /api/status and /metrics of a real server on 127.0.0.1, and the page in headless Chromium.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run``
installs them) and skips, saying so, only when they are absent. Set
``ACHILLES_DASHBOARD_SCREENSHOT=docs/dashboard.png`` to have it save the
screenshot the README shows.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import tasks
from conftest import target, wait_until
from prometheus_client.parser import text_string_to_metric_families

from achilles_like import LocalCluster, map

TOKEN = "dashboard-test-token"


@pytest.fixture(scope="module")
def web_cluster() -> Iterator[LocalCluster]:
    """A server with its dashboard on a free loopback port and two nodes of one process."""
    with LocalCluster(nodes=2, processes=1, dashboard=True) as running:
        yield running


def get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``path`` (with its query) from the dashboard at ``url``; return the status and body."""
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_api_status_and_metrics_report_a_finished_job(web_cluster: LocalCluster) -> None:
    """After a job, /api/status lists both nodes and /metrics (parsed by prometheus_client) counts tasks."""
    assert web_cluster.dashboard_url.startswith("http://127.0.0.1:")
    assert map(tasks.square, range(40), chunksize=4, **target(web_cluster)) == [x * x for x in range(40)]
    code, body = get(web_cluster.dashboard_url, "/api/status")
    assert code == 200
    status = json.loads(body)
    assert len(status["nodes"]) == 2
    assert all(node["last_heard"] <= status["now"] for node in status["nodes"])
    assert sum(node["tasks_done"] for node in status["nodes"]) >= 10
    assert web_cluster.secret_key not in body.decode()
    code, body = get(web_cluster.dashboard_url, "/metrics")
    assert code == 200
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    values = {sample.name: sample.value for family in families.values() for sample in family.samples}
    assert values["achilles_nodes"] == 2
    assert values["achilles_worker_processes"] == 2
    assert values["achilles_tasks_completed_total"] >= 10
    assert values["achilles_task_duration_seconds_count"] >= 10
    assert values["achilles_received_bytes_total"] > 0 and values["achilles_sent_bytes_total"] > 0
    expected = {"achilles_busy_processes", "achilles_tasks_failed", "achilles_tasks_retried"}
    expected |= {"achilles_jobs_queued", "achilles_job_pending_tasks", "achilles_authentication_failures"}
    assert expected <= set(families)


def test_page_is_one_self_contained_file(web_cluster: LocalCluster) -> None:
    """The page loads nothing from elsewhere: no external script, style sheet or image."""
    code, body = get(web_cluster.dashboard_url, "/")
    page = body.decode()
    assert code == 200 and "<title>achilles_like cluster</title>" in page
    assert "src=" not in page and "<link" not in page and "https://" not in page


def test_a_foreign_host_name_is_refused_without_a_token(web_cluster: LocalCluster) -> None:
    """Without a token only loopback Host names are answered, so DNS rebinding reads nothing."""
    code, body = get(web_cluster.dashboard_url, "/api/status", {"Host": "attacker.example"})
    assert code == 403 and b"not a loopback name" in body


def test_a_configured_token_is_required_on_every_request() -> None:
    """With a token set, every path answers 403 without it and 200 with it (query or bearer header)."""
    with LocalCluster(nodes=0, dashboard=True, server_args=("--dashboard-token", TOKEN)) as running:
        url = running.dashboard_url
        assert url.endswith(f"?token={TOKEN}")
        for path in ("/", "/api/status", "/metrics"):
            assert get(url, path)[0] == 403
            assert get(url, path + "?token=wrong")[0] == 403
            assert get(url, path + f"?token={TOKEN}")[0] == 200
            assert get(url, path, {"Authorization": f"Bearer {TOKEN}"})[0] == 200


# -- in a real browser ----------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Selenium, with a fresh profile, quit at the end."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,760",
    ):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="achilles-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(60)
            yield driver
        finally:
            driver.quit()


def test_the_page_shows_nodes_and_a_job_progressing_in_chromium(
    web_cluster: LocalCluster, browser: Any
) -> None:
    """Headless Chromium sees the node names and the running job's done count change without a reload."""

    browser.get(web_cluster.dashboard_url)

    # Texts are read in one script call: the page redraws every second, so an element
    # found in one call may be gone (stale) by the next.
    def texts(selector: str) -> list[str]:
        script = "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)"
        return list(browser.execute_script(script, selector))

    names = lambda: texts("#nodes .node-name")  # noqa: E731
    wait_until(lambda: len(names()) == 2, what="both nodes on the page")
    status = json.loads(get(web_cluster.dashboard_url, "/api/status")[1])
    assert sorted(names()) == sorted(node["name"] for node in status["nodes"])

    results: list[int] = []
    job = threading.Thread(
        target=lambda: results.extend(
            map(
                functools.partial(tasks.slow_square, delay=0.2), range(60), chunksize=1, **target(web_cluster)
            )
        )
    )
    job.start()
    try:
        progress = lambda: texts("#job-progress")  # noqa: E731
        wait_until(lambda: any(text.split(" ")[0] not in ("", "0") for text in progress()), what="progress")
        first = progress()[0]
        wait_until(lambda: progress()[:1] not in ([], [first]), what="the done count to change")
        label = json.loads(get(web_cluster.dashboard_url, "/api/status")[1])["job"]["label"]
        assert f"· {label}" in texts("#job")[0]
        if screenshot := os.environ.get("ACHILLES_DASHBOARD_SCREENSHOT"):
            browser.save_screenshot(screenshot)
    finally:
        job.join(60)
    assert results == [x * x for x in range(60)]


def test_dashboard_settings_come_from_arguments_environment_and_dotenv(tmp_path: Any) -> None:
    """DASHBOARD_PORT/HOST/TOKEN follow the usual precedence; 0 means any free port; the token is masked."""
    from achilles_like.config import load_settings

    env_file = tmp_path / ".env"
    env_file.write_text("DASHBOARD_PORT=8787\nDASHBOARD_TOKEN=from-file\n")
    settings = load_settings(env_file=env_file, environ={"ACHILLES_DASHBOARD_HOST": "0.0.0.0"})
    assert (settings.dashboard_port, settings.dashboard_host) == (8787, "0.0.0.0")
    assert "from-file" not in repr(settings)
    assert load_settings(env_file=env_file, environ={}, dashboard_port=0).dashboard_port == 0
    env_file.write_text("")
    assert load_settings(env_file=env_file, environ={}).dashboard_port is None


def test_a_token_is_generated_beyond_loopback_only() -> None:
    """The dashboard makes up a token when it listens beyond loopback, never on loopback."""
    from achilles_like.server.web import dashboard_token

    assert dashboard_token("127.0.0.1", "") == ""
    assert len(dashboard_token("0.0.0.0", "")) >= 32
    assert dashboard_token("0.0.0.0", "mine") == "mine"


def test_nodes_default_to_the_cpus_they_may_use() -> None:
    """The default process count is the affinity mask's size, not the machine's CPU count."""
    from achilles_like.config import usable_cpus

    assert usable_cpus() == len(os.sched_getaffinity(0))
