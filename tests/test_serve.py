"""`vaepipe serve`: a workdir's pages over HTTP on 127.0.0.1, and nothing else of the workdir."""

import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from helpers import free_port, stop_group
from vaepipe.query import query_all
from vaepipe.serve import make_server, page_url


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, "", b""


def test_the_pages_and_their_thumbnails_are_served_and_nothing_else(built_copy):
    result = query_all(built_copy, k=3)
    server = make_server(built_copy, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        url = page_url(result.report, built_copy.root, port)
        assert url == f"http://127.0.0.1:{port}/runs/{result.run_dir.name}/report.html"
        status, kind, body = get(url)
        assert status == 200 and kind.startswith("text/html") and body == result.report.read_bytes()
        thumb = re.search(r'src="(thumbs/[^"]+)"', body.decode()).group(1)
        status, kind, image = get(url.rsplit("/", 1)[0] + "/" + thumb)
        assert status == 200 and kind.startswith("image/") and image == (result.run_dir / thumb).read_bytes()
        status, _, listing = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b'href="runs/"' in listing and b"models" not in listing
        # The model, the index and the tables are not pages: not served, however asked for.
        for path in ("models/", "manifest.parquet", "collection.json", "runs/../collection.json",
                     "runs/%2e%2e/collection.json", "index/"):
            assert get(f"http://127.0.0.1:{port}/{path}")[0] == 404, path
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_the_command_prints_the_address_of_the_latest_report(built_copy):
    result = query_all(built_copy, k=3)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", str(built_copy.root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in first
        url = f"http://127.0.0.1:{port}/runs/{result.run_dir.name}/report.html"
        assert second.split()[-1] == url
        assert get(url)[0] == 200
        # The port is taken now: a second server says so in one line and exits 2.
        taken = subprocess.run([sys.executable, "-m", "flows.cli", "serve", str(built_copy.root), "--port", str(port)],
                               capture_output=True, text=True, timeout=60)
        assert taken.returncode == 2 and "--port" in taken.stderr and len(taken.stderr.strip().splitlines()) == 1
    finally:
        stop_group(proc, timeout=10)
