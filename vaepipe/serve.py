"""A workdir's pages (query reports, samples) over HTTP on this machine.

A report opens from disk, but a browser refuses a file:// link on a web page, which is where the Prefect UI's
artifacts put it. `vaepipe serve W` serves the workdir's `runs/` and `samples/` folders read-only on 127.0.0.1;
the artifacts give the http:// address of each page. Nothing else in the workdir (models, index, Parquet) is served.
"""

from __future__ import annotations

import io
import logging
import posixpath
import urllib.parse
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from vaepipe.store import REPORT_FILE, Workdir

log = logging.getLogger("vaepipe")

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
SERVED = ("runs", "samples")  # the workdir's folders of pages


def page_url(page: Path, workdir: Path, port: int = DEFAULT_PORT, host: str = HOST) -> str:
    """Where `vaepipe serve` shows a page of the workdir (a report.html or a samples index.html)."""
    rel = Path(page).resolve().relative_to(Path(workdir).resolve()).as_posix()
    return f"http://{host}:{port}/{urllib.parse.quote(rel)}"


def latest_pages(workdir: Workdir) -> list[Path]:
    """The newest query report and samples page, those that exist."""
    found = []
    for pattern in (f"runs/*/{REPORT_FILE}", "samples/*/index.html"):
        pages = [p for p in workdir.root.glob(pattern) if not p.parent.name.startswith(".")]
        if pages:
            found.append(max(pages, key=lambda p: p.stat().st_mtime))
    return found


class _Pages(SimpleHTTPRequestHandler):
    """GET and HEAD of files under the served folders (and their listings); anything else is 404."""

    def send_head(self):  # type: ignore[no-untyped-def]
        path = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))
        parts = [p for p in path.split("/") if p]
        if not parts:  # the workdir itself: links to the served folders only
            return self._listing()
        if parts[0] not in SERVED or ".." in parts:
            self.send_error(HTTPStatus.NOT_FOUND, "not a page of this workdir")
            return None
        return super().send_head()

    def _listing(self):  # type: ignore[no-untyped-def]
        links = "".join(f'<li><a href="{name}/">{name}/</a></li>' for name in SERVED
                        if Path(self.directory, name).is_dir())
        body = f"<!doctype html><meta charset='utf-8'><title>vaepipe</title><ul>{links}</ul>".encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        log.debug("serve: " + format, *args)


def make_server(workdir: Workdir, port: int = DEFAULT_PORT, host: str = HOST) -> ThreadingHTTPServer:
    """A server of the workdir's pages, bound but not yet serving (call serve_forever); port 0 takes a free one.
    Raises OSError if the port is taken."""
    return ThreadingHTTPServer((host, port), partial(_Pages, directory=str(workdir.root)))
