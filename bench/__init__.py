"""Benchmarks of Ping Listener against the bare waitress limit: `make bench` runs them all (bench/run.py)."""

import sys
from pathlib import Path

# The benchmarks reuse the tests' real collaborators: the SMTP-over-TLS server and the settings writer.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
