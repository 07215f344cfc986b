"""The example files and image server that the README's examples use (`examples/`), without
Ray: the files agree with each other, the store master and the README, and the server answers
every URL they name, and nothing else."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator

import pytest
import requests
from PIL import Image

from examples.imagehost import IMAGES, ExampleServer
from harness.service import ROOT
from imgjobs.jobfile import load_job_file

README = (ROOT / "README.md").read_text()
EXAMPLES = ROOT / "examples"
README_IMAGES = "127.0.0.1:9000"  # where the README's examples ask for images


def test_the_example_files_agree_with_each_other_and_the_store_master() -> None:
    csv_job = load_job_file(EXAMPLES / "visits.csv").payload
    assert json.loads((EXAMPLES / "visits.json").read_text()) == csv_job
    master = (ROOT / "data" / "store_master.csv").read_text().split()
    known = {line.rsplit(",", 1)[-1] for line in master}
    assert {visit["store_id"] for visit in csv_job["visits"]} <= known
    urls = [url for visit in csv_job["visits"] for url in visit["image_url"]]
    assert all(url.startswith(f"http://{README_IMAGES}/") for url in urls)
    # The README shows the file whole, as `cat` prints it.
    shown = README.split("$ cat examples/visits.csv", 1)[1].split("\n$ ", 1)[0]
    assert shown.split("\n", 1)[1] + "\n" == (EXAMPLES / "visits.csv").read_text()


@pytest.fixture(scope="module")
def example_server() -> Iterator[ExampleServer]:
    server = ExampleServer(0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_example_server_serves_every_url_of_the_examples(
    example_server: ExampleServer,
) -> None:
    base = f"http://127.0.0.1:{example_server.server_address[1]}"
    sizes = {name: (width, height) for name, (_f, _t, width, height, _c) in IMAGES.items()}
    for url in {
        u for v in load_job_file(EXAMPLES / "visits.csv").payload["visits"] for u in v["image_url"]
    }:
        path = url.removeprefix(f"http://{README_IMAGES}")
        answer = requests.get(base + path, timeout=10)
        if path.startswith("/status/"):
            assert answer.status_code == int(path.rsplit("/", 1)[1])
            continue
        assert answer.status_code == 200
        assert Image.open(io.BytesIO(answer.content)).size == sizes[path.rsplit("/", 1)[1]]
    # What the API example's results show, and the big job's URLs (the query is ignored).
    assert sizes["red.jpg"] == (640, 480) and sizes["green.png"] == (300, 200)
    assert requests.get(f"{base}/img/red.jpg?9999", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/img/nope.jpg", "/img/red.jpg/x", "/status/abc", "/status/99",
     "/status/600", "/status/-1", "/", "/img/", "/img/%2e%2e/red.jpg"],
)  # fmt: skip
def test_the_example_server_answers_anything_else_404(
    example_server: ExampleServer, path: str
) -> None:
    answer = requests.get(f"http://127.0.0.1:{example_server.server_address[1]}{path}", timeout=10)
    assert answer.status_code == 404


def test_make_images_runs_the_example_server() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.* images\b", makefile, re.M)
    recipe = makefile.split("\nimages:", 1)[1].split("\n\n", 1)[0]
    assert "$(BIN)/python -m examples.imagehost" in recipe
