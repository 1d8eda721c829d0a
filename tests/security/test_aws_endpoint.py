"""Issue 12 item 7 (AWS endpoint): ``endpoint_url: http://...`` sends signed requests and all data unencrypted.

Every destination type with an ``aws`` section is covered (found from the configuration model, so a new AWS
destination is tested too). Plain HTTP is refused unless ``aws.allow_insecure_endpoint: true`` (a local test peer:
kinesalite, a fake); https:// and the default (AWS's own endpoint) stay accepted; user info in the URL is refused
whatever the flag says.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from devkit.peers import ROOT
from gateway.componentconfig import PublisherConfig
from gateway.config import validate
from gateway.destinations.aws import AwsSettings
from gateway.destinations.base import DestinationConfigBase
from gateway.errors import ConfigError

SECRET = "wJalr-S3CRET-key"
REQUIRED = {"kinesis": {"stream_name": "s"}}


def _aws_types() -> list[str]:
    """Every destination type whose model has an ``aws: AwsSettings`` field."""
    union = PublisherConfig.model_fields["destinations"].annotation
    found = []
    for model in _models(union):
        if issubclass(model, DestinationConfigBase) and "aws" in model.model_fields:
            assert model.model_fields["aws"].annotation is AwsSettings
            found.append(str(model.model_fields["type"].default))
    return sorted(found)


def _models(tp: Any) -> list[type]:
    if isinstance(tp, type):
        return [tp]
    return [m for arg in get_args(tp) for m in _models(arg)]


AWS_TYPES = _aws_types()


def _cfg(kind: str, **aws: Any) -> dict[str, Any]:
    return {"destinations": [{"type": kind, "name": "cloud", **REQUIRED.get(kind, {}),
                              "aws": {"region": "eu-west-1", **aws}}]}


def test_every_aws_destination_is_covered() -> None:
    assert {"kinesis", "sitewise"} <= set(AWS_TYPES)


@pytest.mark.parametrize("kind", AWS_TYPES)
def test_a_plain_http_endpoint_is_refused_with_one_line_naming_the_flag(kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(PublisherConfig, _cfg(kind, endpoint_url="http://vpce.example.internal"), origin="test")
    assert len(info.value.problems) == 1, info.value.problems
    line = info.value.problems[0]
    assert line.startswith(f"destinations.0.{kind}.aws.endpoint_url:"), line
    assert "https://" in line and "allow_insecure_endpoint: true" in line, line


@pytest.mark.parametrize("kind", AWS_TYPES)
@pytest.mark.parametrize("aws", [{}, {"endpoint_url": None}, {"endpoint_url": "https://vpce-1.kinesis.example:443"},
                                 {"endpoint_url": "http://127.0.0.1:4567", "allow_insecure_endpoint": True}])
def test_https_unset_and_explicitly_allowed_http_are_accepted(kind: str, aws: dict[str, Any]) -> None:
    cfg = validate(PublisherConfig, _cfg(kind, **aws), origin="test")
    assert cfg.destinations[0].type == kind


@pytest.mark.parametrize("kind", AWS_TYPES)
@pytest.mark.parametrize("url", [f"https://AKIDEXAMPLE:{SECRET}@vpce.example", f"http://AKID:{SECRET}@127.0.0.1:1",
                                 "https://someone@vpce.example"])
def test_user_info_in_the_endpoint_is_refused_even_when_http_is_allowed(kind: str, url: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(PublisherConfig, _cfg(kind, endpoint_url=url, allow_insecure_endpoint=True), origin="test")
    text = "\n".join(info.value.problems)
    assert f"destinations.0.{kind}.aws.endpoint_url" in text and "user info" in text, text
    assert SECRET not in text + str(info.value)


@pytest.mark.parametrize("kind", AWS_TYPES)
def test_other_schemes_are_refused(kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(PublisherConfig, _cfg(kind, endpoint_url="ftp://vpce.example", allow_insecure_endpoint=True),
                 origin="test")
    assert "endpoint_url" in info.value.problems[0] and "https://" in info.value.problems[0]


def test_the_publisher_refuses_to_start_with_a_plain_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "publisher.yaml"
    path.write_text(yaml.safe_dump({**_cfg("kinesis", endpoint_url="http://127.0.0.1:1"),
                                    "store": {"kind": "embedded", "path": str(tmp_path / "data")}}))
    proc = subprocess.run([sys.executable, str(ROOT / "components" / "publisher" / "main.py"), "--config", str(path)],
                          capture_output=True, text=True, timeout=30, env={"PYTHONPATH": str(ROOT),
                                                                           "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "allow_insecure_endpoint" in proc.stdout + proc.stderr


@pytest.mark.parametrize("kind", AWS_TYPES)
def test_an_allowed_plain_endpoint_warns_once_at_start(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    cfg = validate(PublisherConfig, _cfg(kind, endpoint_url="http://127.0.0.1:4567", allow_insecure_endpoint=True),
                   origin="test").destinations[0]
    secure = validate(PublisherConfig, _cfg(kind), origin="test").destinations[0]

    async def start_and_close(dest: Any) -> None:
        sink = dest.build()
        await sink.start()
        await sink.close(5.0)

    with caplog.at_level(logging.WARNING):
        asyncio.run(start_and_close(cfg))
        asyncio.run(start_and_close(secure))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert "http://127.0.0.1:4567" in warned[0] and "cloud" in warned[0]
