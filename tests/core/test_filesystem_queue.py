"""The embedded default's broker: a worker never sees a half-written message (it used to die on one)."""

import os

import pytest
from kombu import Connection
from kombu.transport.virtual import Empty

from evalsite.core import filesystem_queue


@pytest.fixture
def connection(tmp_path):
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    with Connection(
        "filesystem://localhost//",
        transport="evalsite.core.filesystem_queue:Transport",
        transport_options=options,
    ) as conn:
        yield conn, folder


def test_a_message_is_invisible_to_workers_until_it_is_whole_and_then_delivered_once(connection, monkeypatch):
    conn, folder = connection
    channel = conn.default_channel
    assert isinstance(channel, filesystem_queue.Channel)
    seen_while_writing = []
    replace = os.replace

    def replace_after_a_worker_polled(src, dst):
        # The message is written but not yet renamed into place: a polling worker must find nothing
        # (kombu's own transport hands it the file while it is still empty here).
        assert os.path.getsize(src) > 0 and os.path.basename(src).startswith(".")
        try:
            channel._get("cpu")
        except Empty:
            seen_while_writing.append("nothing")
        replace(src, dst)

    monkeypatch.setattr(filesystem_queue.os, "replace", replace_after_a_worker_polled)
    channel._put("cpu", {"body": "job 7"})
    assert seen_while_writing == ["nothing"]
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no partial file left behind
    assert channel._size("cpu") == 1
    assert channel._get("cpu") == {"body": "job 7"}
    with pytest.raises(Empty):
        channel._get("cpu")


def test_the_celery_app_uses_it_for_filesystem_urls_and_leaves_other_urls_their_own_transport():
    from evalsite.celery import app
    from evalsite.settings import celery as celery_settings

    # The unit settings are the embedded default (no CELERY_BROKER_URL).
    assert celery_settings.CELERY_BROKER_URL.startswith("filesystem://")
    with app.connection_for_write() as conn:
        assert isinstance(conn.default_channel, filesystem_queue.Channel)
    with app.connection_for_write("redis://127.0.0.1:1/0") as conn:
        assert conn.transport.driver_type == "redis"
