"""tools/smtp_sink.py, the README's "Try alerts locally" recipe: the service's test email arrives and is printed,
and the sink keeps its CA across restarts."""

import contextlib
import re
import shutil
import signal
import stat
import subprocess
import sys

from support import ROOT


@contextlib.contextmanager
def running_sink(ca_file):
    """The sink on a port the OS chooses, writing or reading its CA at `ca_file`: yields (process, the
    environment its banner tells a person to export, word for word)."""
    sink = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "smtp_sink.py"), "--port", "0", "--ca-file", str(ca_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = [sink.stdout.readline() for _ in range(4)]
        exported = re.fullmatch(r"  export (.*)\n", banner[2]).group(1)
        assert banner[3] == "  make test-email TO=you@example.com\n"
        yield sink, dict(assignment.split("=", 1) for assignment in exported.split())
    finally:
        sink.send_signal(signal.SIGINT)
        sink.wait(10)
    assert sink.returncode == 0 and "Traceback" not in sink.stderr.read()


def send_test_email(env):
    """`server.py --send-test-email` with `env` (and nothing else of this process's environment)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--send-test-email", "you@example.com"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "PATH": "/usr/bin:/bin"},
    )


def test_the_sink_prints_a_test_email_sent_as_its_banner_says(tmp_path):
    ca_file = tmp_path / "smtp-sink-ca.pem"
    with running_sink(ca_file) as (sink, env):
        assert env["SSL_CERT_FILE"] == str(ca_file)
        sent = send_test_email(env)
        assert sent.returncode == 0, sent.stderr
        printed = [sink.stdout.readline() for _ in range(8)]
    assert printed[:4] == [
        "--- email from me@example.com to you@example.com\n",
        "From: Ping Listener <me@example.com>\n",
        "To: you@example.com\n",
        "Subject: Ping Listener test email\n",
    ]


def test_a_restarted_sink_keeps_its_ca_so_a_service_trusting_the_first_goes_on_sending(tmp_path):
    ca_file = tmp_path / "smtp-sink-ca.pem"
    first_ca = tmp_path / "trusted-at-first.pem"
    with running_sink(ca_file):
        # What a running service read from SSL_CERT_FILE when it started.
        shutil.copy(ca_file, first_ca)
    assert stat.S_IMODE((tmp_path / "smtp-sink-ca.pem.key").stat().st_mode) == 0o600
    with running_sink(ca_file) as (sink, env):
        sent = send_test_email({**env, "SSL_CERT_FILE": str(first_ca)})
        assert sent.returncode == 0, sent.stderr
        assert sink.stdout.readline() == "--- email from me@example.com to you@example.com\n"
    assert ca_file.read_bytes() == first_ca.read_bytes()
