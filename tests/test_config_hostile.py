"""Configuration files that are broken or hostile get one clear line, in bounded time and memory (issue 13 item 11):
an alias bomb, bad UTF-8, a binary file, nesting deep enough to exhaust the interpreter's stack."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.componentconfig import PublisherConfig
from gateway.config import load_file
from gateway.errors import ConfigError

_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))

CASES = {
    "bomb.yaml": (_BOMB.encode(), "expands to more than"),
    "deep.json": (b"[" * 100_000, "nested too deeply"),
    "deep.yaml": (b"a:" + b" [" * 20_000, "nested too deeply"),
    "flowdeep.yaml": (b"a: " + b"{b: " * 150 + b"1" + b"}" * 150, "nested deeper than"),
    "latin1.yaml": ("destinations:\n  - name: Kühler\n".encode("latin-1"), "not UTF-8 text (invalid byte at line 2)"),
    "binary.yaml": (bytes(range(256)) * 4, "binary file"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_files_are_refused_quickly_with_one_line(tmp_path: Path, name: str) -> None:
    content, says = CASES[name]
    path = tmp_path / name
    path.write_bytes(content)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_file(PublisherConfig, path)
    assert time.monotonic() - t0 < 10
    text = str(err.value)
    assert says in text and str(path) in text and "Fix:" in text and "\n" not in text, text


def test_ordinary_anchors_still_work(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text("destinations:\n"
                    "  - {type: file, name: a, path: a.jsonl, route: &r {streams: [factoryedge-opcua]}}\n"
                    "  - {type: file, name: b, path: b.jsonl, route: *r}\n")
    cfg = load_file(PublisherConfig, path)
    assert [d.route.streams for d in cfg.destinations] == [["factoryedge-opcua"]] * 2
