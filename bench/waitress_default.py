"""The baseline a user would deploy: bench/bare_app.py's hello-world app under `waitress-serve` with its defaults.

python -m bench.waitress_default [--port PORT]   (what `waitress-serve --port PORT bench.bare_app:hello` does,
printing the `listening on` line the benchmarks wait for)
"""

import argparse
import sys

import waitress

from bench.bare_app import hello


def main(argv=None):
    """Serve `hello` on 127.0.0.1 with waitress's default settings until killed or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 lets the OS choose")
    args = parser.parse_args(argv)
    server = waitress.create_server(hello, host="127.0.0.1", port=args.port)
    print(f"listening on http://127.0.0.1:{server.effective_port}", flush=True)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
