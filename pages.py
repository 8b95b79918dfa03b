"""The service's HTML pages, each put together once from the parts in static/: frame.html, what every page
shares (its head's common lines, the favicon, the shared stylesheet), and the page's own file (its title and
assets, then a line <!--body-->, then its body). A line <!--include NAME.html--> in a page stands for the
file static/NAME.html, a part several pages share (the unlock form's field and button; what still works when
a page is disabled)."""

import re
from pathlib import Path

_INCLUDE = re.compile(r"<!--include ([a-z][a-z-]*\.html)-->\n")
_BODY = "<!--body-->\n"
_HEAD = "<!--head-->\n"


def page(static_dir: Path, name: str) -> bytes:
    """The page static/`name` in the frame, its includes in place, as UTF-8."""
    own = (static_dir / name).read_text(encoding="utf-8")
    head, found, body = own.partition(_BODY)
    if not found:
        raise ValueError(f"{name} has no {_BODY.strip()} line")
    frame = (static_dir / "frame.html").read_text(encoding="utf-8")
    text = frame.replace(_HEAD, head).replace(_BODY, body)
    return _INCLUDE.sub(lambda match: (static_dir / match[1]).read_text(encoding="utf-8"), text).encode()
