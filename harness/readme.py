"""The README's runnable examples, read from the README itself: the fenced blocks marked
`<!-- run -->` of a section, split into commands and the answers shown under them, and the
normalising that lets a shown answer be compared with a fresh one (ids, times and timing-bound
counts differ from run to run; the shape, the codes and the messages must not)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

RUN_MARK = "<!-- run -->"
# `# 201 {"job_id":1}`: an HTTP status and the body `curl -s` prints, as the API examples show.
HTTP_ANSWER = re.compile(r"^(\d{3}) (.*)$")
# Fields whose values are the run's own: compared by kind, not by value.
VOLATILE_FIELDS = frozenset(
    {"created_at", "started_at", "finished_at", "cancelled_at", "processed_at", "node_id"}
)
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
TABLE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
HEX_ID = re.compile(r"\b[0-9a-f]{32,}\b")
FLOAT = re.compile(r"\b\d+\.\d+\b")
PROGRESS_BAR = re.compile(r"^\[[#.]+\]")
# A progress line's rate and ETA are `-` until two samples tell them.
RATE = re.compile(r"(\d+\.\d+|-) img/s  ETA \S+")
# Lines whose counts depend on how far a job got when it was cancelled, or on the rate.
TIMING_BOUND = re.compile(r"^\[|cancell")
INTEGER = re.compile(r"\d+")


@dataclass(frozen=True)
class Example:
    """One command of a block and what the README shows it answering: several answers when
    the answer moves over time (the last is where it settles)."""

    command: str
    answers: tuple[str, ...]
    http: bool  # answers are `<status> <body>`


@dataclass(frozen=True)
class Block:
    language: str  # `sh` (commands, `# ` answers) or `console` (`$ ` commands, output lines)
    examples: tuple[Example, ...]


def section(readme: str, title: str) -> str:
    """The text under the `## title` heading, up to the next `## ` heading (its `###`
    subsections included)."""
    start = readme.index(f"\n## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else len(readme)]


def run_blocks(text: str) -> list[Block]:
    """The fenced blocks that directly follow a `<!-- run -->` line, in order."""
    lines = text.splitlines()
    blocks = []
    for index, line in enumerate(lines):
        if line.strip() != RUN_MARK:
            continue
        fence = lines[index + 1]
        if not fence.startswith("```"):
            raise ValueError(f"{RUN_MARK} is not followed by a fenced block: {fence!r}")
        language = fence[3:].strip()
        end = lines.index("```", index + 2)
        body = lines[index + 2 : end]
        if language == "sh":
            blocks.append(Block(language, parse_sh(body)))
        elif language == "console":
            blocks.append(Block(language, parse_console(body)))
        else:
            raise ValueError(f"cannot run a {language!r} block")
    return blocks


def parse_sh(lines: list[str]) -> tuple[Example, ...]:
    """Commands (a command goes on until a `# ` line) and the `# ` lines under each: an
    answer starts at `# <status> ` or, for a command that is not a bare `curl`, each line
    is a line of output; a more indented `# ` line continues the answer above it."""
    examples: list[Example] = []
    command: list[str] = []
    answers: list[str] = []

    def close() -> None:
        if command:
            text = "\n".join(command)
            http = bool(answers) and all(HTTP_ANSWER.match(answer) for answer in answers)
            # Plain output is one answer of many lines; HTTP answers are alternatives.
            shown = tuple(answers) if http or not answers else ("\n".join(answers),)
            examples.append(Example(text, shown, http))
        command.clear()
        answers.clear()

    for line in lines:
        if line.startswith("#"):
            shown = line[1:].removeprefix(" ")
            if answers and shown.startswith(" ") and HTTP_ANSWER.match(answers[0]):
                answers[-1] += shown.strip()
            else:
                answers.append(shown)
        else:
            if answers:
                close()
            command.append(line)
    close()
    return tuple(examples)


def parse_console(lines: list[str]) -> tuple[Example, ...]:
    """`$ ` commands and the lines under each until the next one: one answer of many lines."""
    examples: list[Example] = []
    for line in lines:
        if line.startswith("$ "):
            examples.append(Example(line[2:], ("",), http=False))
        elif examples:
            last = examples[-1]
            answer = f"{last.answers[0]}\n{line}" if last.answers[0] else line
            examples[-1] = Example(last.command, (answer,), http=False)
    return tuple(
        example if example.answers != ("",) else Example(example.command, (), False)
        for example in examples
    )


def normal_json(value: Any, key: str | None = None) -> Any:
    """A JSON value with its run-bound fields replaced by their kind."""
    if key in VOLATILE_FIELDS:
        return None if value is None else type(value).__name__
    if isinstance(value, dict):
        return {name: normal_json(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [normal_json(item) for item in value]
    return value


def normal_http(answer: str) -> tuple[int, Any]:
    """`<status> <body>` as (status, normalised JSON body)."""
    found = HTTP_ANSWER.match(answer)
    if found is None:
        raise ValueError(f"not an HTTP answer: {answer!r}")
    return int(found[1]), normal_json(json.loads(found[2]))


def normal_lines(output: str) -> list[str]:
    """Output lines with times, ids, rates and progress bars replaced by placeholders, runs of
    spaces (table columns) made one, the counts of timing-bound lines masked, and a progress
    line that a later one replaced dropped (off a terminal, one is printed every few seconds)."""
    lines: list[str] = []
    for raw in output.rstrip("\n").splitlines():
        line = RATE.sub("R img/s  ETA E", PROGRESS_BAR.sub("[BAR]", raw.rstrip()))
        for pattern, mark in ((ISO_TIME, "TIME"), (TABLE_TIME, "TIME"), (HEX_ID, "ID")):
            line = pattern.sub(mark, line)
        line = FLOAT.sub("F", re.sub(r" +", " ", line))
        if TIMING_BOUND.search(line):
            line = INTEGER.sub("N", line)
        if lines and line.startswith("[BAR]") and lines[-1].startswith("[BAR]"):
            lines[-1] = line
        else:
            lines.append(line)
    return lines
