"""The README's examples as a newcomer meets them: the `<!-- run -->` blocks of "## API" and
"## Using it" run as written against a service started like `make run` (with the README's
`IMAGE_SERVICE_ALLOW_PRIVATE_URLS=1`) and the example image server that `make images` runs,
and answer what the README shows. Beside it, the README reader itself, without Ray (the
example files and server: tests/test_examples.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.readme import (
    Example,
    normal_http,
    normal_lines,
    parse_sh,
    run_blocks,
    section,
)
from harness.service import ROOT, ServiceProcess, StartService, free_port

README = (ROOT / "README.md").read_text()
EXAMPLES = ROOT / "examples"
# The addresses the README's commands name, and the setting it starts the service with.
README_SERVICE, README_IMAGES, README_METRICS = "localhost:8000", "127.0.0.1:9000", "localhost:8080"
README_SETTING = {"IMAGE_SERVICE_ALLOW_PRIVATE_URLS": "1"}
# Commands that change something run once; the rest are asked again until their answer
# settles on the last one shown (a job's status, a metrics scrape, ...).
ONE_SHOT = re.compile(r"imgjobs submit|imgjobs cancel|-XPOST")
SETTLE_SECONDS = 90


def the_examples() -> list[Example]:
    return [
        example
        for title in ("API", "Using it")
        for block in run_blocks(section(README, title))
        for example in block.examples
    ]


# --- without Ray: the reader, the example files, the image server ---------------------------


def test_both_sections_have_examples_to_run_and_each_parses() -> None:
    api = [e for b in run_blocks(section(README, "API")) for e in b.examples]
    using = [e for b in run_blocks(section(README, "Using it")) for e in b.examples]
    assert len(api) >= 6 and all(example.http for example in api)
    for example in api:
        assert all(normal_http(answer) for answer in example.answers)
    assert any("imgjobs submit examples/visits.csv" in e.command for e in using)
    assert any("imgjobs cancel" in e.command for e in using)


def test_a_multi_line_http_answer_is_one_answer_and_alternatives_stay_apart() -> None:
    examples = parse_sh(
        [
            "curl -s 'localhost:8000/api/status?jobid=1'",
            '# 200 {"status":"ongoing",',
            '#      "job_id":1}',
            '# 200 {"status":"completed","job_id":1}',
            "curl -s localhost:8080/metrics | sort",
            "# a 1",
            "# b 2",
        ]
    )
    assert examples[0].answers == (
        '200 {"status":"ongoing","job_id":1}',
        '200 {"status":"completed","job_id":1}',
    )
    assert examples[0].http and not examples[1].http
    assert examples[1].answers == ("a 1\nb 2",)


def test_normalising_hides_only_what_a_run_owns() -> None:
    shown = "job 2 failed: 7 images, 6 done, 1 failed\n  created   2026-11-29T00:47:15.803Z"
    again = "job 2 failed: 7 images, 6 done, 1 failed\n  created   2027-01-02T10:00:00.000Z"
    assert normal_lines(shown) == normal_lines(again)
    # A count that is not bound to timing must match exactly: another outcome is a failure.
    assert normal_lines(shown) != normal_lines(shown.replace("6 done, 1", "5 done, 2"))
    assert normal_lines("download 2") != normal_lines("download 3")
    # A cancel's counts depend on timing; its words do not.
    cancel = "job 3 cancelling: 9203 images dropped or failed, 27 in flight finishing"
    assert normal_lines(cancel) == normal_lines(cancel.replace("9203", "12"))
    assert normal_lines(cancel) != normal_lines(cancel.replace("cancelling", "cancelled"))
    # Off a terminal the progress line comes every few seconds: the last one stands.
    progress = "2\n[#...] 1/7  14%  - img/s  ETA -  failed 0  ongoing\n[####] 7/7 100%  3.5 img/s"
    assert normal_lines(progress + "  ETA 0:00  failed 1  failed") == [
        "2",
        "[BAR] N/N N% R img/s ETA E failed N failed",
    ]
    body = '{"job_id":1,"created_at":"2026-11-29T00:25:48.374Z","node_id":"ab","width":640}'
    assert normal_http(f"200 {body}") == normal_http(
        f"200 {body.replace('2026', '2030').replace('ab', 'cd')}"
    )
    assert normal_http(f"200 {body}") != normal_http(f"200 {body.replace('640', '641')}")
    assert normal_http(f"200 {body}") != normal_http(f"201 {body}")


# --- with Ray: the examples themselves -------------------------------------------------------


# Runs a module as `python -m` does, with Python's own Ctrl-C handler. By the time a full run gets
# here the test process ignores SIGINT (its children inherit that, and Python then installs no
# handler: py-spy showed the example server idle in select() a minute after Ctrl-C), while a
# terminal's `make images` has it.
WITH_CTRL_C = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('{module}', run_name='__main__', alter_sys=True)"
)


@pytest.fixture(scope="module")
def image_port() -> Iterator[int]:
    """The example server as `make images` runs it, on a port of its own (the README's :9000
    is substituted in the commands), in its own process group."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", WITH_CTRL_C.format(module="examples.imagehost"), str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().decode().startswith("serving the README's example")
        yield port
    finally:
        os.killpg(process.pid, signal.SIGINT)
        # Ctrl-C is its way to stop: it exits 0, in 0.1 s here; a hang says where it hangs.
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stacks = subprocess.run(
                [str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(process.pid)],
                capture_output=True,
                timeout=30,
                check=False,
            )
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"the example server ignored Ctrl-C:\n{stacks.stdout.decode()}")
        assert code == 0


@dataclass
class Shell:
    """Runs the README's commands one by one in a directory of their own, keeping what a
    terminal would keep between them: what was sourced, and the last exit status."""

    workdir: Path
    env: dict[str, str]
    substitutions: dict[str, str]
    sourced: str = ""
    last_status: int = 0

    def localise(self, text: str) -> str:
        for readme_address, ours in self.substitutions.items():
            text = text.replace(readme_address, ours)
        return text

    def run(self, command: str) -> str:
        script = f"{self.sourced}\n(exit {self.last_status})\n{command}"
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
        self.last_status = done.returncode
        if command.startswith(". ") or command.startswith("source "):
            self.sourced += f"\n{command}"
        return done.stdout.decode()


def check(shell: Shell, example: Example) -> None:
    command = shell.localise(example.command)
    if example.http:
        # curl -s prints the body alone; the status the README shows is asked for beside it.
        command = command.replace("curl -s ", "curl -s -w '\\n%{http_code}' ", 1)
    shown = [shell.localise(answer) for answer in example.answers]
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        output = shell.run(command)
        if not shown:
            assert shell.last_status == 0, f"{example.command!r} failed: {output}"
            return
        if example.http:
            body, _, status = output.rpartition("\n")
            got: object = normal_http(f"{status} {body}")
            wanted: list[object] = [normal_http(answer) for answer in shown]
        else:
            got, wanted = normal_lines(output), [normal_lines(answer) for answer in shown]
        if got == wanted[-1]:
            return
        one_shot = ONE_SHOT.search(command) is not None
        if one_shot or time.monotonic() > deadline:
            pytest.fail(
                f"README example {example.command!r}\nshows:\n{chr(10).join(shown)}\n"
                f"answered:\n{output}",
                pytrace=False,
            )
        time.sleep(1)


@pytest.mark.timeout(600)
def test_the_readme_examples_answer_as_shown(
    service_with: StartService, image_port: int, tmp_path: Path
) -> None:
    service: ServiceProcess = service_with(
        "readme", {**README_SETTING, "IMAGE_SERVICE_GPU_DELAY": "0.1-0.4"}
    )
    substitutions = {
        README_SERVICE: f"localhost:{service.port}",
        README_IMAGES: f"127.0.0.1:{image_port}",
        README_METRICS: f"localhost:{service.metrics_port}",
    }
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "examples").mkdir()
    # A newcomer's environment: no setting of ours but the service's address (the README's
    # commands rely on the default, http://127.0.0.1:8000).
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_SERVICE_")}
    shell = Shell(tmp_path, {**env, "IMAGE_SERVICE_URL": service.url}, substitutions)
    for name in ("visits.csv", "visits.json"):
        text = (EXAMPLES / name).read_text()
        (tmp_path / "examples" / name).write_text(shell.localise(text))
    examples = the_examples()
    assert len(examples) > 15
    for example in examples:
        check(shell, example)
