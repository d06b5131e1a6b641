"""`/docs` and `/redoc` with no internet: every asset comes from the controller itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from fleet.api.app import create_app
from fleet.settings import Settings
from tests.fixtures_broker import BrokerThread
from tests.procs import Stack

URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""", re.I)


@pytest.fixture
def client(registered: Engine, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(
        Settings(data_dir=tmp_path, database_url=str(registered.url)), engine=registered
    )
    with TestClient(app) as c:
        yield c


def test_docs_pages_name_no_other_host_and_their_assets_serve(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200, page
        html = response.text
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), (page, html)
        local = [a or b for a, b in URL.findall(html)]
        assert local, page
        for url in local:
            assert url.startswith("/"), (page, url)
            if url.startswith("/docs/assets/"):
                asset = client.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    "name", ["../core.py", "..%2Fcore.py", "__init__.py", "%00", "swagger-ui.css/..", "x" * 300]
)
def test_only_the_named_assets_are_served(client: TestClient, name: str) -> None:
    response = client.get(f"/docs/assets/{name}")
    assert response.status_code == 404, name
    assert "import" not in response.text


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`fleet serve`, a real process, with the embedded broker."""
    tmp = tmp_path_factory.mktemp("docs")
    broker = BrokerThread()
    broker.start()
    stack = Stack(tmp, broker.url, "tdocs/fleet/v1", f"sqlite:///{tmp / 'fleet.db'}")
    try:
        stack.controller()
        yield stack.base
    finally:
        stack.stop_all()
        broker.stop()


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_render_in_a_browser_with_no_internet(controller: str, page: Any, path: str) -> None:
    outside: list[str] = []

    def only_here(route: Any) -> None:
        if route.request.url.startswith(controller):
            route.continue_()
        else:  # what a site without internet would not get
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_here)
    page.goto(controller + path)
    if path == "/docs":
        page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
        assert page.locator(".swagger-ui .opblock").count() > 10
    else:
        page.wait_for_selector("h1", timeout=30_000)
        assert "Classroom fleet controller" in page.inner_text("body")
        assert "/api/v1/sites" in page.inner_text("body")
    assert outside == [], outside
