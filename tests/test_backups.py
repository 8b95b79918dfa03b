"""The backup and the restore that docs/operations.md ("Backups") tells an operator to run, run as written (with
the test's paths and user; the real service started and stopped where the doc says `systemctl`) while a client
pings: the restored database holds every ping acknowledged before the backup began, and the service starts on
it."""

import os
import re
import sqlite3
import subprocess
import threading
import urllib.request

import pytest

from support import ROOT, query, write_settings

OPERATIONS = ROOT / "docs" / "operations.md"
DOC_DB_DIR = "/var/lib/ping-listener"
DOC_BACKUPS = "/var/backups"
# Pings acknowledged before the backup begins, and at least this many more during and after it.
PINGS_BEFORE = 200
PINGS_AFTER = 50


def backups_section():
    """The shell blocks of the "Backups" section of docs/operations.md: (backup commands, restore commands), each a
    list of lines; the backup block's commented alternative ("# or, compacted: ...") is a command of its own."""
    text = OPERATIONS.read_text()
    section = text[text.index("### Backups\n") :]
    section = section[: section.index("\n### ", 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 2, blocks
    backup = [re.sub(r"^# or, compacted: ", "", line) for line in blocks[0].splitlines()]
    return backup, blocks[1].splitlines()


class Pinger(threading.Thread):
    """POSTs /ping/pi with bodies 0, 1, 2... one after the other until stopped; keeps the bodies answered 200, in
    order, and any other answer."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.acknowledged, self.refused = url, [], []
        self.stop = threading.Event()

    def run(self):
        number = 0
        while not self.stop.is_set():
            request = urllib.request.Request(f"{self.url}/ping/pi", data=str(number).encode())
            with urllib.request.urlopen(request, timeout=30) as answer:
                (self.acknowledged if answer.status == 200 else self.refused).append(number)
            number += 1

    def wait_for(self, count):
        """Wait until `count` pings are acknowledged (or fail the test after 60 s)."""
        for _ in range(6000):
            if len(self.acknowledged) >= count:
                return
            self.stop.wait(0.01)
        raise AssertionError(f"only {len(self.acknowledged)} pings acknowledged")


def run_shell(line, substitutions):
    """Run one documented shell `line` with `substitutions` (doc text -> test text) made; fail if it fails."""
    for documented, local in substitutions.items():
        line = line.replace(documented, local)
    result = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{line}\n{result.stderr}"


@pytest.mark.parametrize("command", [0, 1], ids=[".backup", "VACUUM INTO"])
def test_the_documented_backup_taken_while_pings_arrive_restores_to_a_database_the_service_starts_on(
    tmp_path, start_server, command
):
    backup_lines, restore_lines = backups_section()
    state, backups = tmp_path / "state", tmp_path / "backups"
    state.mkdir()
    backups.mkdir()
    db = state / "ping_listener.db"
    settings = write_settings(
        tmp_path / "settings.json", {"pi": {"monitor": True, "max_sleep": 600, "email_frequency": 600}}
    )
    server = start_server(settings, db)
    pinger = Pinger(server.url)
    pinger.start()
    try:
        pinger.wait_for(PINGS_BEFORE)
        acknowledged_before = list(pinger.acknowledged)
        run_shell(backup_lines[command], {DOC_DB_DIR: str(state), DOC_BACKUPS: str(backups)})
        pinger.wait_for(len(pinger.acknowledged) + PINGS_AFTER)
    finally:
        pinger.stop.set()
        pinger.join(timeout=60)
    assert pinger.refused == []
    (backup,) = backups.iterdir()
    with sqlite3.connect(backup) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    # The restore block, as written: systemctl stop, put the copy in place, systemctl start.
    documented_backup = re.search(rf"{DOC_BACKUPS}/\S+\.db", " ".join(restore_lines))[0]
    substitutions = {
        DOC_DB_DIR: str(state),
        documented_backup: str(backup),
        "-o ping-listener -g ping-listener": f"-o {os.getuid()} -g {os.getgid()}",
    }
    restarted = None
    for line in restore_lines:
        if line == "systemctl stop ping-listener":
            assert server.stop() == 0
        elif line == "systemctl start ping-listener":
            restarted = start_server(settings, db)
        else:
            run_shell(line, substitutions)
    assert restarted is not None and restarted.get("/healthz")[0] == 200
    restored = {int(body) for (body,) in query(db, "SELECT body FROM pings")}
    assert [number for number in acknowledged_before if number not in restored] == []
    # The copy is the moment the backup began: the pings after it (acknowledged by the first service) are not in it.
    assert pinger.acknowledged[-1] not in restored
    assert restarted.post("/ping/pi", b"after the restore")[0] == 200
