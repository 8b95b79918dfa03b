"""tools/smtp_sink.py, the README's "Try alerts locally" recipe: the service's test email arrives and is printed."""

import re
import signal
import subprocess
import sys

from support import ROOT


def test_the_sink_prints_a_test_email_sent_as_its_banner_says(tmp_path):
    ca_file = tmp_path / "smtp-sink-ca.pem"
    sink = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "smtp_sink.py"), "--port", "0", "--ca-file", str(ca_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = [sink.stdout.readline() for _ in range(4)]
        # The environment the banner tells a person to export, word for word.
        exported = re.fullmatch(r"  export (.*)\n", banner[2]).group(1)
        env = dict(assignment.split("=", 1) for assignment in exported.split())
        assert env["SSL_CERT_FILE"] == str(ca_file)
        assert banner[3] == "  make test-email TO=you@example.com\n"
        sent = subprocess.run(
            [sys.executable, str(ROOT / "server.py"), "--send-test-email", "you@example.com"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**env, "PATH": "/usr/bin:/bin"},
        )
        assert sent.returncode == 0, sent.stderr
        printed = [sink.stdout.readline() for _ in range(8)]
    finally:
        sink.send_signal(signal.SIGINT)
        sink.wait(10)
    assert printed[:4] == [
        "--- email from me@example.com to you@example.com\n",
        "From: Ping Listener <me@example.com>\n",
        "To: you@example.com\n",
        "Subject: Ping Listener test email\n",
    ]
    assert sink.returncode == 0 and "Traceback" not in sink.stderr.read()
