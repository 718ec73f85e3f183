"""The fake evalsite server and a client of it, for every client test."""

from __future__ import annotations

import threading

import pytest

from tests.client.fake_api import FakeApi, Server, make_client


@pytest.fixture
def server():
    api = FakeApi()
    httpd = Server(api)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    api.run = api.add_run()
    yield api
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def client(server):
    with make_client(server.url) as c:
        yield c
