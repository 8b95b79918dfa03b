"""The Markdown documentation (README.md and docs/*.md) as a reader gets it: every code block is closed where it
was meant to be, and every curl example that posts JSON, or calls an endpoint that wants JSON, says it is JSON
(without Content-Type: application/json those endpoints answer 415)."""

import re

import pytest

from support import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A code fence (CommonMark): up to 3 spaces, then 3 or more backticks or tildes, then an info string.
FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
# The endpoints that refuse a body that is not declared JSON.
JSON_ENDPOINT = re.compile(r"/(testing|overview)/")
JSON_TYPE = re.compile(r"""-H ["']Content-Type: application/json["']""")


def fence_problems(text):
    """What is wrong with the code fences of Markdown `text`: a block never closed, or a fence with an info
    string (```sh) inside an open block, which Markdown takes as text, so that the block opened before it
    swallows the prose up to its next fence."""
    problems, opened = [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.fullmatch(line)
        if fence is None:
            continue
        marks, info = fence[1], fence[2].strip()
        if opened is None:
            opened = (number, marks)
        elif marks[0] == opened[1][0] and len(marks) >= len(opened[1]):
            if not info:
                opened = None
            else:
                problems.append(f"line {number}: {line.strip()!r} inside the block opened at line {opened[0]}")
    if opened is not None:
        problems.append(f"the block opened at line {opened[0]} is never closed")
    return problems


def curl_commands(text):
    """Each curl command in the code blocks of Markdown `text`, its continued lines joined: (line, command)."""
    commands, in_block, pending = [], False, None
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.fullmatch(line):
            in_block = not in_block
            continue
        if not in_block:
            continue
        if pending is not None:
            pending = (pending[0], pending[1][:-1].rstrip() + " " + line.strip())
        elif "curl " in line and not line.lstrip().startswith("#"):
            pending = (number, line[line.index("curl ") :].strip())
        if pending is not None and not pending[1].endswith("\\"):
            commands.append(pending)
            pending = None
    return commands


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_code_block_of_the_docs_is_closed_where_it_was_meant_to_be(document):
    assert fence_problems(document.read_text()) == []


def test_the_fence_check_sees_a_block_left_open_before_the_next_one():
    text = "Text\n```sh\ncurl a\n\nProse read as code.\n\n```sh\ncurl b\n```\n"
    assert fence_problems(text) == ["line 7: '```sh' inside the block opened at line 2"]
    assert fence_problems("```\ncode\n") == ["the block opened at line 1 is never closed"]
    assert fence_problems("````md\n```sh\n```\n````\n") == []  # a longer fence may hold a shorter one


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_curl_example_posting_json_or_calling_a_json_endpoint_declares_it(document):
    commands = curl_commands(document.read_text())
    undeclared = [
        (number, command)
        for number, command in commands
        if (JSON_ENDPOINT.search(command) or re.search(r"(-d|--data\S*) +'\{", command))
        and not JSON_TYPE.search(command)
    ]
    assert undeclared == []


def test_the_curl_check_reads_commands_continued_over_lines():
    text = (
        '```sh\ncurl -d \'{"password": "x"}\' \\\n  http://h/overview/day\n'
        "# curl http://h/testing/state\ncurl -H 'Content-Type: application/json' \\\n  http://h/testing/state\n```\n"
        "curl http://h/overview/state outside a block\n"
    )
    assert curl_commands(text) == [
        (2, 'curl -d \'{"password": "x"}\' http://h/overview/day'),
        (5, "curl -H 'Content-Type: application/json' http://h/testing/state"),
    ]
