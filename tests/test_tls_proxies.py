"""TLS in front of the service: contrib/Caddyfile and contrib/nginx.conf, each run for real (Debian's caddy and
nginx, which `make test` installs) on 127.0.0.1 with a certificate from the tests' CA (trustme; no ACME), in
front of the real service; and `trusted_proxy`, which alone makes the service believe X-Forwarded-For.

Clients connect from several loopback addresses (127.0.0.2, 127.0.0.3: all of 127.0.0.0/8 is this machine's),
so that the proxy sees each one's own address, as it sees the internet's."""

import datetime
import http.client
import json
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from support import ROOT, free_port, wait_until, write_settings

CADDY = Path(shutil.which("caddy") or "/usr/bin/caddy")
NGINX = Path("/usr/sbin/nginx")
USERS = {"pi": {"monitor": True, "max_sleep": 3600, "email_frequency": 3600}}
PASSWORD = "look at the fleet"
# Wrong passwords one address may give before it is refused (guards.WRONG_PASSWORD_LIMIT).
WRONG_PASSWORD_LIMIT = 5


def replaced(text, replacements):
    """`text` with each (shipped, local) pair replaced, each shipped text found exactly once."""
    for shipped, local in replacements:
        assert text.count(shipped) == 1, shipped
        text = text.replace(shipped, local)
    return text


class Client:
    """HTTP(S) requests to 127.0.0.1:`port` from the local address `source`, one connection each."""

    def __init__(self, port, source="127.0.0.1", context=None):
        self.port, self.source, self.context = port, source, context

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body text) of one request."""
        if self.context is None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=(self.source, 0))
        else:
            connection = http.client.HTTPSConnection(
                "localhost", self.port, timeout=30, source_address=(self.source, 0), context=self.context
            )
        try:
            connection.request(method, path, body=body, headers=headers or {})
            answer = connection.getresponse()
            return answer.status, answer.headers, answer.read().decode()
        finally:
            connection.close()

    def overview(self, password, cookie=None, forwarded_for=None):
        """POST /overview/state with `password`: (status, the session cookie set, if any)."""
        headers = {"Content-Type": "application/json"}
        if cookie:
            headers["Cookie"] = cookie
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        status, answer_headers, _ = self.request("POST", "/overview/state", json.dumps({"password": password}), headers)
        return status, (answer_headers["Set-Cookie"] or "").partition(";")[0]

    def answers(self):
        """Whether /healthz answers 200 (False while nothing listens)."""
        try:
            return self.request("GET", "/healthz")[0] == 200
        except OSError:
            return False


def https_context(ca):
    """A client TLS context that trusts only the tests' CA."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def certificate_files(ca, directory):
    """(certificate chain, key) files for localhost, issued by the tests' CA."""
    issued = ca.issue_cert("localhost")
    chain, key = directory / "localhost.crt", directory / "localhost.key"
    chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return chain, key


def start_service(tmp_path, start_server, trusted):
    settings = {"server_root": "https://localhost"} | ({"trusted_proxy": "127.0.0.1"} if trusted else {})
    path = write_settings(tmp_path / "settings.json", USERS, **settings)
    return start_server(path, OVERVIEW_PASSWORD=PASSWORD)


def caddy_config(tmp_path, ca, port, service):
    """contrib/Caddyfile for https://localhost:`port` with the tests' certificate, in front of `service`."""
    chain, key = certificate_files(ca, tmp_path)
    text = replaced(
        (ROOT / "contrib" / "Caddyfile").read_text(),
        [
            # No admin API (its port is shared by every Caddy here) and no listener on port 80.
            ("{\n\tservers {", "{\n\tadmin off\n\tauto_https disable_redirects\n\tservers {"),
            ("monitor.example.net {", f"https://localhost:{port} {{\n\tbind 127.0.0.1"),
            ("\t# tls /etc/caddy/monitor.crt /etc/caddy/monitor.key", f"\ttls {chain} {key}"),
            ("reverse_proxy 127.0.0.1:8080", "reverse_proxy " + service.url.removeprefix("http://")),
        ],
    )
    path = tmp_path / "Caddyfile"
    path.write_text(text)
    return path


def caddy_env(tmp_path):
    """Caddy's environment: its data and configuration directories in `tmp_path`."""
    return {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def start_caddy(tmp_path, config):
    """`caddy run` with `config`; the Popen."""
    assert CADDY.exists(), f"{CADDY} is missing: `make test` installs it (apt-get install caddy)"
    with (tmp_path / "caddy.log").open("wb") as log:
        return subprocess.Popen(
            [CADDY, "run", "--config", config, "--adapter", "caddyfile"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=caddy_env(tmp_path),
        )


def nginx_config(tmp_path, ca, port, service):
    """contrib/nginx.conf on 127.0.0.1:`port` with the tests' certificate, in front of `service`, inside a main
    configuration of its own (one process, its files in `tmp_path`); the main configuration's path."""
    chain, key = certificate_files(ca, tmp_path)
    site = replaced(
        (ROOT / "contrib" / "nginx.conf").read_text(),
        [
            ("    listen 80;\n    listen [::]:80;\n", f"    listen 127.0.0.1:{free_port()};\n"),
            ("    listen 443 ssl;\n    listen [::]:443 ssl;\n", f"    listen 127.0.0.1:{port} ssl;\n"),
            ("/etc/letsencrypt/live/monitor.example.net/fullchain.pem", str(chain)),
            ("/etc/letsencrypt/live/monitor.example.net/privkey.pem", str(key)),
            ("proxy_pass http://127.0.0.1:8080", "proxy_pass " + service.url),
        ],
    ).replace("server_name monitor.example.net;", "server_name localhost;")
    (tmp_path / "site.conf").write_text(site)
    temporary = " ".join(f"{kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi"))
    main = (
        f"daemon off;\nmaster_process off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/nginx.log;\n"
        f"events {{}}\nhttp {{\n access_log off;\n {temporary} uwsgi_temp_path {tmp_path}/uwsgi;"
        f" scgi_temp_path {tmp_path}/scgi;\n include {tmp_path}/site.conf;\n}}\n"
    )
    path = tmp_path / "nginx-main.conf"
    path.write_text(main)
    return path


def nginx_command(config, tmp_path, *args):
    assert NGINX.exists(), f"{NGINX} is missing: `make test` installs it (apt-get install nginx)"
    return [NGINX, "-c", config, "-p", tmp_path, "-e", tmp_path / "nginx.log", *args]


def start_nginx(tmp_path, config):
    """nginx in the foreground with `config`; the Popen."""
    check = subprocess.run(nginx_command(config, tmp_path, "-t"), capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "[warn]" not in check.stderr, check.stderr
    with (tmp_path / "nginx.out").open("wb") as log:
        return subprocess.Popen(nginx_command(config, tmp_path), stdout=log, stderr=subprocess.STDOUT)


def test_the_shipped_caddyfile_is_valid_and_formatted(tmp_path):
    shipped = ROOT / "contrib" / "Caddyfile"
    result = subprocess.run(
        [CADDY, "adapt", "--config", shipped, "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=30,
        env=caddy_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "not formatted" not in result.stderr, result.stderr
    assert json.loads(result.stdout)["apps"]["http"]["servers"]


@pytest.mark.parametrize("proxy", ["caddy", "nginx"])
@pytest.mark.parametrize("trusted", [True, False], ids=["trusted_proxy", "no-trusted_proxy"])
def test_behind_the_shipped_tls_proxy_devices_ping_people_unlock_and_read_logs(
    tmp_path, ca, start_server, proxy, trusted
):
    service = start_service(tmp_path, start_server, trusted)
    port = free_port()
    if proxy == "caddy":
        process = start_caddy(tmp_path, caddy_config(tmp_path, ca, port, service))
    else:
        process = start_nginx(tmp_path, nginx_config(tmp_path, ca, port, service))
    context = https_context(ca)
    browser, guesser, other = (Client(port, source, context) for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    try:
        wait_until(browser.answers, message=f"{proxy} answering")
        status, _, pinged = browser.request("GET", "/ping/pi")
        assert status == 200
        ping_time = datetime.datetime.strptime(pinged, "%y/%m/%d %H:%M:%S")
        status, session = browser.overview(PASSWORD)
        assert status == 200 and session.startswith("ping_listener_session=")
        day = f"year={ping_time:%Y}&month={ping_time.month}&day={ping_time.day}"
        status, _, logs = browser.request("GET", f"/logs?username=pi&{day}")
        assert (status, json.loads(logs)) == (200, [f"{ping_time:%H:%M:%S}"])

        guesses = [guesser.overview("guess")[0] for _ in range(WRONG_PASSWORD_LIMIT + 1)]
        assert guesses == [401] * WRONG_PASSWORD_LIMIT + [429]
        # Another address, claiming to be the refused one: with trusted_proxy the service sees its own address
        # (the last address the proxy sent), which is not refused; without it, every client has the proxy's
        # address, refused now.
        assert other.overview("guess", forwarded_for="127.0.0.2")[0] == (401 if trusted else 429)
        # A fresh unlock from the browser's own address: not refused with trusted_proxy (the guesses were another
        # address's); refused without it (they were all the proxy's).
        assert browser.overview(PASSWORD)[0] == (200 if trusted else 429)
        # The overview's refreshes (the browser's session) are answered whoever guesses.
        assert [browser.overview(PASSWORD, cookie=session)[0] for _ in range(3)] == [200] * 3
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted_proxy-another-peer", "no-trusted_proxy"])
def test_x_forwarded_for_from_a_peer_not_trusted_is_not_believed(tmp_path, start_server, trusted):
    # With trusted_proxy 127.0.0.1 the client connects from 127.0.0.2; without it, from 127.0.0.1 itself.
    service = start_service(tmp_path, start_server, trusted)
    client = Client(int(service.url.rpartition(":")[2]), "127.0.0.2" if trusted else "127.0.0.1")
    statuses = [client.overview("guess", forwarded_for=f"203.0.113.{n}")[0] for n in range(WRONG_PASSWORD_LIMIT + 1)]
    assert statuses == [401] * WRONG_PASSWORD_LIMIT + [429]


def test_x_forwarded_for_from_the_trusted_proxy_is_the_client_address(tmp_path, start_server):
    service = start_service(tmp_path, start_server, trusted=True)
    proxy = Client(int(service.url.rpartition(":")[2]))
    statuses = [proxy.overview("guess", forwarded_for=f"203.0.113.{n}")[0] for n in range(WRONG_PASSWORD_LIMIT + 1)]
    assert statuses == [401] * (WRONG_PASSWORD_LIMIT + 1)
    # What a client wrote before the proxy's own address is not believed: the last one counts.
    forwarded = ", ".join(["198.51.100.7", "203.0.113.50"])
    statuses = [proxy.overview("guess", forwarded_for=forwarded)[0] for _ in range(WRONG_PASSWORD_LIMIT + 1)]
    assert statuses == [401] * WRONG_PASSWORD_LIMIT + [429]
    assert proxy.overview("guess", forwarded_for="198.51.100.7")[0] == 401
