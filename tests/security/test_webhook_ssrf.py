"""Issue 14 finding 6: a run's webhook_url could point at the platform's own network (Redis on 127.0.0.1:6379,
the cloud metadata service, [::1]) or be ftp://, and a signed POST reached a loopback listener."""

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3.util.connection
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from evalsite.alerts import webhooks
from evalsite.alerts.models import WebhookDelivery
from evalsite.alerts.services import alert_create, webhook_deliver
from evalsite.api.services import researcher_token_issue
from evalsite.runs.models import Run
from evalsite.runs.services import run_create

pytestmark = pytest.mark.django_db

PUBLIC_IP = "93.184.215.14"
REFUSED_URLS = [
    "http://127.0.0.1:6379/",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[::1]:8080/hook",
    "ftp://example.org/hook",
    "https://127.0.0.1:6379/",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]:8080/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:a9fe:a9fe]/hook",  # 169.254.169.254, IPv4-mapped
    "https://localhost/hook",
    "https://0.0.0.0/hook",
    "https://10.1.2.3/hook",
    "https://192.168.1.1/hook",
    "https://[fe80::1]/hook",
    "https://[fc00::1]/hook",
    "https://224.0.0.1/hook",
    "https://2130706433/hook",  # 127.0.0.1 written as one decimal number
    "https://0177.0.0.1/hook",  # 127.0.0.1 in octal
]


class _Listener(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        type(self).received.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def listener():
    """A loopback HTTP server that counts the requests reaching it (the attack's target)."""
    _Listener.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], _Listener
    server.shutdown()


@pytest.fixture
def researcher_client():
    user = get_user_model().objects.create_user("ada", password="x")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {researcher_token_issue(user=user)}")
    return client, user


@pytest.fixture
def connections(monkeypatch):
    """Every address urllib3 connects to; nothing is actually connected (as if nothing listened)."""
    seen = []

    def create_connection(address, *args, **kwargs):
        seen.append(address[0])
        raise ConnectionRefusedError(f"test: not connecting to {address}")

    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)
    return seen


def fake_dns(monkeypatch, answers: dict[str, list[list[str]]]):
    """getaddrinfo answers ``answers[host]`` one call after another (the last one repeats); other hosts are real."""
    real = socket.getaddrinfo
    calls: dict[str, int] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        n = calls[host] = calls.get(host, 0) + 1
        addresses = answers[host][min(n, len(answers[host])) - 1]
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (a, port),
            )
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def deliver_one(run, url):
    """Store ``url`` on the run as the admin or a database edit could, raise an alert and attempt its webhook."""
    Run.objects.filter(pk=run.pk).update(webhook_url=url, webhook_secret="whsec_ssrf")
    run.refresh_from_db()
    alert, _ = alert_create(
        run=run, dedupe_key=f"k-{url}", kind="detector_any", severity="critical", title="t"
    )
    delivery = WebhookDelivery.objects.get(alert=alert)
    outcome, retry_in = webhook_deliver(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    return outcome, retry_in, delivery


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_an_internal_or_non_https_webhook_url_is_refused_at_the_api_naming_the_field(researcher_client, url):
    client, _ = researcher_client
    response = client.post(
        "/api/v1/runs/",
        {"name": "ssrf", "kind": "vocoder", "model_family": "hifigan", "webhook_url": url},
        format="json",
    )
    assert response.status_code == 400, response.json()
    assert "webhook_url" in response.json()["extra"]["fields"]
    assert not Run.objects.exists()


@pytest.mark.parametrize("url", REFUSED_URLS[:4])
def test_a_run_token_cannot_patch_its_webhook_to_an_internal_address(researcher_client, url):
    _, user = researcher_client
    run, token = run_create(name="voc", kind="vocoder", model_family="hifigan", owner=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.patch(f"/api/v1/runs/{run.pk}/", {"webhook_url": url}, format="json")
    assert response.status_code == 400 and "webhook_url" in response.json()["extra"]["fields"]
    run.refresh_from_db()
    assert run.webhook_url == "" and run.webhook_secret == ""


def test_a_host_name_that_resolves_to_loopback_is_refused_at_the_api(researcher_client, monkeypatch):
    client, _ = researcher_client
    fake_dns(monkeypatch, {"hooks.attacker.example": [["127.0.0.1"]]})
    response = client.post(
        "/api/v1/runs/",
        {
            "name": "ssrf",
            "kind": "vocoder",
            "model_family": "hifigan",
            "webhook_url": "https://hooks.attacker.example/x",
        },
        format="json",
    )
    assert response.status_code == 400
    assert "127.0.0.1" in response.json()["extra"]["fields"]["webhook_url"][0]
    assert not Run.objects.exists()


def test_a_public_https_webhook_url_is_accepted(researcher_client, monkeypatch):
    client, _ = researcher_client
    fake_dns(monkeypatch, {"hooks.lab.example": [[PUBLIC_IP]]})
    response = client.post(
        "/api/v1/runs/",
        {
            "name": "ok",
            "kind": "vocoder",
            "model_family": "hifigan",
            "webhook_url": "https://hooks.lab.example/alerts",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["webhook_secret"].startswith("whsec_")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/",
        "https://127.0.0.1:{port}/",
        "http://localhost:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://2130706433:{port}/",
    ],
)
@pytest.mark.parametrize("allow_http", [False, True])
def test_a_stored_internal_webhook_url_is_refused_at_send_time_and_nothing_reaches_the_listener(
    listener, settings, url, allow_http, django_capture_on_commit_callbacks
):
    settings.EVALSITE_WEBHOOK_ALLOW_HTTP = allow_http
    port, handler = listener
    run = Run.objects.create(name="voc", kind="vocoder", model_family="hifigan")
    with django_capture_on_commit_callbacks(execute=False):
        outcome, retry_in, delivery = deliver_one(run, url.format(port=port))
    assert (outcome, retry_in) == ("failed", None)
    assert "webhook_url" in delivery.last_error and delivery.last_status_code is None
    assert handler.received == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://[::1]:8080/",
        "ftp://example.org/hook",
        "https://[fe80::1]/",
    ],
)
def test_stored_metadata_ipv6_loopback_and_ftp_urls_are_never_connected(
    settings, url, connections, django_capture_on_commit_callbacks
):
    settings.EVALSITE_WEBHOOK_ALLOW_HTTP = True
    run = Run.objects.create(name="voc", kind="vocoder", model_family="hifigan")
    with django_capture_on_commit_callbacks(execute=False):
        outcome, _, delivery = deliver_one(run, url)
    assert outcome == "failed" and "webhook_url" in delivery.last_error
    assert connections == []


def test_the_operator_can_allow_a_loopback_receiver_explicitly(
    listener, settings, django_capture_on_commit_callbacks
):
    settings.EVALSITE_WEBHOOK_ALLOW_HTTP, settings.EVALSITE_WEBHOOK_ALLOWED_NETWORKS = True, ["127.0.0.1/32"]
    port, handler = listener
    run = Run.objects.create(name="voc", kind="vocoder", model_family="hifigan")
    with django_capture_on_commit_callbacks(execute=False):
        outcome, _, _ = deliver_one(run, f"http://127.0.0.1:{port}/hook")
    assert outcome == "delivered" and len(handler.received) == 1


def test_dns_rebinding_cannot_move_the_post_to_loopback_after_the_check(
    monkeypatch, connections, django_capture_on_commit_callbacks
):
    """The attacker's DNS answers a public address to the check and 127.0.0.1 to any later lookup: the host is
    resolved once, and the connection goes to the address that was checked."""
    calls = fake_dns(monkeypatch, {"rebind.attacker.example": [[PUBLIC_IP], ["127.0.0.1"]]})
    run = Run.objects.create(name="voc", kind="vocoder", model_family="hifigan")
    with django_capture_on_commit_callbacks(execute=False):
        outcome, retry_in, delivery = deliver_one(run, "https://rebind.attacker.example/hook")
    assert connections == [PUBLIC_IP]
    assert calls == {"rebind.attacker.example": 1}
    assert outcome == "retrying" and "ConnectionError" in delivery.last_error


def test_a_host_that_resolves_to_a_public_and_a_loopback_address_is_refused(monkeypatch, connections):
    fake_dns(monkeypatch, {"mixed.attacker.example": [[PUBLIC_IP, "127.0.0.1"]]})
    result = webhooks.webhook_post("https://mixed.attacker.example/", {}, secret="s", delivery_id=1)
    assert not result.ok and not result.retryable and "127.0.0.1" in result.error
    assert connections == []


def test_the_post_is_sent_to_the_checked_address_with_the_original_host_and_tls_name(monkeypatch):
    fake_dns(monkeypatch, {"hooks.lab.example": [[PUBLIC_IP]]})
    target = webhooks.webhook_target("https://hooks.lab.example:8443/alerts?run=1")
    assert (target.address, target.host, target.port, target.path) == (
        PUBLIC_IP,
        "hooks.lab.example",
        8443,
        "/alerts?run=1",
    )
    pool = webhooks._pool(target)
    assert pool.host == PUBLIC_IP and pool.conn_kw["server_hostname"] == "hooks.lab.example"
    assert pool.assert_hostname == "hooks.lab.example" and pool.cert_reqs == "CERT_REQUIRED"
    assert webhooks._host_header(target) == "hooks.lab.example:8443"


def test_redirects_are_not_followed(settings, monkeypatch, django_capture_on_commit_callbacks):
    """A public receiver answering 307 to the metadata service: the answer is a failure, not a second request."""
    settings.EVALSITE_WEBHOOK_ALLOW_HTTP, settings.EVALSITE_WEBHOOK_ALLOWED_NETWORKS = True, ["127.0.0.1/32"]
    followed = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            followed.append(self.path)
            self.send_response(307)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = webhooks.webhook_post(
            f"http://127.0.0.1:{server.server_address[1]}/hook", {}, secret="s", delivery_id=1
        )
    finally:
        server.shutdown()
    assert not result.ok and result.status_code == 307 and not result.retryable
    assert followed == ["/hook"]


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "non-public"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        (PUBLIC_IP, None),
        ("2606:4700::1111", None),
    ],
)
def test_every_ip_version_and_embedding_of_an_internal_address_is_named(address, kind):
    import ipaddress

    assert webhooks.address_refusal(ipaddress.ip_address(address)) == kind
