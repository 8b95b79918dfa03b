"""The limit of this stack: a hello-world WSGI app served by waitress exactly as server.py serves the service.

It uses the service's own `stop_on_signals` and serving.py's `create_http_server` and `serve_until_signalled`, with
/ping as a quick path, so it is served exactly the service's way; only the app differs.

python -m bench.bare_app [--port PORT]
"""

import argparse
import sys

import server
import serving
import web

BODY = b"24/11/26 14:03:05"
HEADERS = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(BODY)))]


def hello(environ, start_response):
    """Answer every request with 200 and a body the size of a ping's answer."""
    start_response("200 OK", HEADERS)
    return [BODY]


def main(argv=None):
    """Serve `hello` on 127.0.0.1 until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 lets the OS choose")
    args = parser.parse_args(argv)
    stop_requested = server.stop_on_signals()
    http_server = serving.create_http_server(hello, "127.0.0.1", args.port, server.QUICK_PATHS, web.MAX_REQUEST_BODY)
    print(f"listening on http://127.0.0.1:{http_server.port}", flush=True)
    serving.serve_until_signalled(http_server, stop_requested, server.SHUTDOWN_GRACE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
