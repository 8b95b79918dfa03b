"""/logs for a person: the HTML page a browser gets for the link in every alert email, listing that day's
signals (time, kind, exit code, run time; never a body). Scripts keep the JSON list: only a request whose
Accept header asks for text/html and not for application/json gets this page (wants_html).

Pure functions of their arguments: web.py reads the store and answers.
"""

import html
import time
from collections.abc import Callable

from localtime import local_clock_writer, short_duration
from records import Signal

# What each kind of signal is called on the pages (static/common.js has the same words).
KIND_WORDS = {"success": "success", "start": "start", "fail": "failure", "log": "log"}
# An Accept header is read up to this many characters: a media type asked for after them is not seen.
MAX_ACCEPT = 2000


def wants_html(accept: str | None) -> bool:
    """Whether a request with this Accept header asks for HTML: text/html is among its media ranges (with a
    q above 0) and application/json is not. No header, `*/*` (curl's), or one that names JSON: False."""
    if not accept:
        return False
    asked = set()
    for media_range in accept[:MAX_ACCEPT].split(","):
        media_type, *parameters = (part.strip() for part in media_range.split(";"))
        if not any(_refused(parameter) for parameter in parameters):
            asked.add(media_type.lower())
    return "text/html" in asked and "application/json" not in asked


def _refused(parameter: str) -> bool:
    """Whether a media range's parameter is q=0 (RFC 9110: "not acceptable")."""
    name, _, value = parameter.partition("=")
    if name.strip().lower() != "q":
        return False
    try:
        return float(value) == 0
    except ValueError:
        return False


def row_writer() -> Callable[[Signal], bytes]:
    """A function that writes a signal as a row of the page's table (its body left out), as UTF-8."""
    clock_time = local_clock_writer()

    def write(signal: Signal) -> bytes:
        kind = KIND_WORDS.get(signal.kind, signal.kind)
        exit_code = "" if signal.exit_code is None else str(signal.exit_code)
        duration = "" if signal.duration is None else short_duration(signal.duration)
        return (
            f'<tr class="kind-{html.escape(signal.kind)}"><td><time>{clock_time(signal.at)}</time></td>'
            f"<td>{html.escape(kind)}</td><td>{exit_code}</td><td>{duration}</td></tr>\n"
        ).encode()

    return write


def page(username: str, day_start: float, rows: list[bytes], cut: bool) -> list[bytes]:
    """The page of `username`'s signals on the local day that begins at `day_start`: `rows` from row_writer(),
    and whether the day held more than them (`cut`). In parts: its head, each row, its end."""
    day = time.strftime("%Y-%m-%d", time.localtime(day_start))
    zone = time.strftime("%Z", time.localtime(day_start))
    name = html.escape(username)
    count = f"{len(rows)} signal{'' if len(rows) == 1 else 's'}"
    if cut:
        count = f"The first {count} of the day (there are more)"
    head = (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="color-scheme" content="light dark">\n'
        f"<title>{name}: signals of {day}</title>\n"
        '<link rel="stylesheet" href="/static/common.css">\n'
        "</head>\n<body>\n"
        f'<header><h1 class="device-name">{name}</h1><p>Signals of {day}, times in {zone}'
        " (the service's time zone)</p></header>\n"
        '<main>\n<section class="panel">\n'
        f'<p class="hint">{count}. Scripts get the times of this day as JSON from the same address.</p>\n'
        '<table class="signals">\n<thead><tr><th>time</th><th>signal</th><th>exit code</th><th>run time</th></tr>'
        "</thead>\n<tbody>\n"
    )
    end = "</tbody>\n</table>\n</section>\n</main>\n</body>\n</html>\n"
    if not rows:
        end = '<tr><td colspan="4">No signal that day.</td></tr>\n' + end
    return [head.encode(), *rows, end.encode()]
