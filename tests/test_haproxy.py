"""The HAProxy configuration shipped in contrib/haproxy.cfg: valid without a warning, and, in front of two real
instances on one PostgreSQL database, losing no ping when one instance is killed (`kill -9`) while clients
ping. HAProxy is Debian's (`make test` installs it); everything listens on 127.0.0.1."""

import concurrent.futures
import http.cookiejar
import json
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

from support import ROOT, free_port, query, wait_until, write_settings

HAPROXY = Path("/usr/sbin/haproxy")
SHIPPED = ROOT / "contrib" / "haproxy.cfg"
CLIENTS = 4
# Pings each client sends once HAProxy has taken the dead instance out: the retried ones are behind them.
PINGS_AFTER_DOWN = 20


def haproxy_check(path):
    """`haproxy -c -f path`: (exit status, its output)."""
    assert HAPROXY.exists(), f"{HAPROXY} is missing: `make test` installs it (apt-get install haproxy)"
    result = subprocess.run([HAPROXY, "-c", "-f", path], capture_output=True, text=True, timeout=30)
    return result.returncode, result.stdout + result.stderr


def test_the_shipped_haproxy_config_is_valid_without_a_warning():
    status, output = haproxy_check(SHIPPED)
    assert status == 0, output
    assert "WARNING" not in output and "ALERT" not in output, output


def local_config(port, instances):
    """The shipped configuration listening on 127.0.0.1:`port` in front of `instances` (ServerProcess)."""
    text = SHIPPED.read_text()
    replacements = [("bind :80", f"bind 127.0.0.1:{port}")]
    for shipped, instance in zip(("10.0.0.11:8080", "10.0.0.12:8080"), instances, strict=True):
        replacements.append((shipped, instance.url.removeprefix("http://")))
    for shipped, local in replacements:
        assert text.count(shipped) == 1, shipped
        text = text.replace(shipped, local)
    return text


def post(url, body):
    """POST `body` to `url` on a fresh connection; the answer's status."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_behind_the_shipped_haproxy_config_a_killed_instance_loses_no_ping(tmp_path, postgres_url, start_server):
    users = {f"client{n}": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600} for n in range(CLIENTS)}
    settings = write_settings(tmp_path / "settings.json", users)
    doomed, survivor = start_server(settings, postgres_url), start_server(settings, postgres_url)
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(local_config(port, (doomed, survivor)))
    assert haproxy_check(config)[0] == 0
    log = tmp_path / "haproxy.log"
    with log.open("wb") as output:
        haproxy = subprocess.Popen([HAPROXY, "-db", "-f", config], stdout=output, stderr=subprocess.STDOUT)
    front = f"http://127.0.0.1:{port}"
    taken_out = threading.Event()

    def ping(client):
        """Ping until PINGS_AFTER_DOWN pings after the dead instance was taken out; (body, status) of each."""
        sent, after_down = [], 0
        while after_down < PINGS_AFTER_DOWN:
            after_down += taken_out.is_set()
            body = f"{client} ping {len(sent)}".encode()
            sent.append((body.decode(), post(f"{front}/ping/{client}", body)))
        return sent

    try:
        wait_until(lambda: _answers(f"{front}/healthz"), message="HAProxy answering")
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            pinging = [pool.submit(ping, client) for client in users]
            try:
                wait_until(lambda: query(postgres_url, "SELECT count(*) FROM pings")[0][0] >= 10 * CLIENTS)
                doomed.kill()
                wait_until(lambda: "monitor-a is DOWN" in log.read_text(errors="replace"), message="monitor-a out")
            finally:
                taken_out.set()  # the clients end (if this failed, their pings only delay the report)
            sent = [result for future in pinging for result in future.result()]
    finally:
        haproxy.kill()
        haproxy.wait()
    assert survivor.stop() == 0
    assert [body for body, status in sent if status != 200] == []
    recorded = {body for (body,) in query(postgres_url, "SELECT body FROM pings")}
    assert [body for body, _ in sent if body not in recorded] == []


def test_behind_the_shipped_haproxy_config_a_browser_that_unlocked_is_answered_while_others_guess(
    tmp_path, postgres_url, start_server
):
    # A session lives in the memory of the instance that started it, and behind HAProxy every client has its
    # address: only a session spares the browser the refusals others' guesses bring on that address.
    settings = write_settings(
        tmp_path / "settings.json", {"pi": {"monitor": True, "max_sleep": 60, "email_frequency": 600}}
    )
    instances = [start_server(settings, postgres_url, OVERVIEW_PASSWORD="look") for _ in range(2)]
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(local_config(port, instances))
    with (tmp_path / "haproxy.log").open("wb") as output:
        haproxy = subprocess.Popen([HAPROXY, "-db", "-f", config], stdout=output, stderr=subprocess.STDOUT)
    front = f"http://127.0.0.1:{port}"
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    others = urllib.request.build_opener()

    def overview(opener, password):
        request = urllib.request.Request(
            f"{front}/overview/state",
            data=json.dumps({"password": password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with opener.open(request, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code

    try:
        wait_until(lambda: _answers(f"{front}/healthz"), message="HAProxy answering")
        assert overview(browser, "look") == 200
        assert {overview(others, "guess") for _ in range(12)} <= {401, 429}
        assert overview(others, "look") == 429  # each instance refuses HAProxy's address now
        assert [overview(browser, "look") for _ in range(6)] == [200] * 6
        # A ping's answer carries no cookie: devices are not kept to an instance.
        with urllib.request.urlopen(f"{front}/ping/pi", timeout=30) as answer:
            assert (answer.status, answer.headers["Set-Cookie"]) == (200, None)
    finally:
        haproxy.kill()
        haproxy.wait()


def _answers(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False
