"""Every bash and python block of the README runs as printed, on a fresh copy after the demo.

A block may be preceded by directives (HTML comments, invisible on GitHub):
``<!-- readme-test: skip: WHY -->`` (another test covers it), ``<!-- readme-test: sub: A => B | C
=> D -->`` (a fast or offline variant: the substitutions are listed where a reader sees them
in the source) and ``<!-- readme-test: env: NAME=VALUE (why) -->``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import _moto_server

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^( *)```(bash|python)\n(.*?)^\1```", re.S | re.M)
DIRECTIVE = re.compile(r"<!-- readme-test: (skip|sub|env): (.*?) -->")
ISOLATED = ("DAGSTER_HOME", "AL_ASSETS_SOURCE_ROOT", "AL_ASSETS_STORAGE_ROOT",
            "MLFLOW_TRACKING_URI", "AL_ASSETS_IMAGE_URLS")


@dataclass
class Block:
    line: int
    language: str
    code: str
    skip: str | None = None
    subs: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(text):
        indent = len(match.group(1))
        code = "\n".join(line[indent:] for line in match.group(3).splitlines())
        block = Block(text[:match.start()].count("\n") + 1, match.group(2), code)
        before = text[:match.start()].rstrip().splitlines()
        while before and DIRECTIVE.search(before[-1]):
            kind, body = DIRECTIVE.search(before.pop()).groups()
            if kind == "skip":
                block.skip = body
            elif kind == "sub":
                block.subs += [tuple(p.strip() + (" " if p.endswith("  ") else "")
                                     for p in pair.split("=>")) for pair in body.split(" | ")]
            else:
                name, _, value = body.split(" ")[0].partition("=")
                block.env[name] = value
        for old, new in block.subs:
            assert old in block.code, f"README line {block.line}: {old!r} is not in the block"
            block.code = block.code.replace(old, new)
        blocks.append(block)
    return blocks


def test_the_readme_blocks_parse_and_every_skip_names_its_reason() -> None:
    blocks = readme_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 6
    assert all(b.skip is None or len(b.skip) > 20 for b in blocks)
    assert sum(b.skip is None for b in blocks) >= 5


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files (as a clone has them, mtimes kept so make sees the venv up to date),
    this checkout's venv, and the demo at 40 images."""
    root = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    _run(root, "bash", "-c", ".venv/bin/al-assets setup-instance && "
         ".venv/bin/al-assets demo --images 40", env={})
    return root


def _run(root: Path, *command: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ISOLATED}
    result = subprocess.run(command, cwd=root, env={**clean, **env}, capture_output=True,
                            text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)[:200]} failed:\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    return output


def _env(block: Block, root: Path, s3: dict[str, str]) -> dict[str, str]:
    env = {k: str(root / v) if k == "DAGSTER_HOME" else v for k, v in block.env.items()}
    return {**s3, **env} if "s3://" in block.code else env


@pytest.mark.slow
@pytest.mark.timeout(3600)  # demo, S3 variant, dg launch, two loop rounds: ~15 min quiet
def test_every_readme_block_runs_as_printed(fresh_copy: Path) -> None:
    import boto3

    blocks = readme_blocks((fresh_copy / "README.md").read_text())
    with _moto_server() as endpoint:
        s3 = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "readme",
              "AWS_SECRET_ACCESS_KEY": "readme", "AWS_DEFAULT_REGION": "us-east-1"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="readme", aws_secret_access_key="readme")
        client.create_bucket(Bucket="my-bucket")
        for path in sorted((fresh_copy / "data" / "demo").rglob("*")):
            if path.is_file() and "ground_truth" not in path.parts:
                key = f"pool/{path.relative_to(fresh_copy / 'data' / 'demo')}"
                client.upload_file(str(path), "my-bucket", key)
        ran = []
        for block in blocks:
            if block.skip:
                continue
            command = (["bash", "-e", "-o", "pipefail", "-c", block.code]
                       if block.language == "bash" else [sys.executable, "-c", block.code])
            _run(fresh_copy, *command, env=_env(block, fresh_copy, s3))
            ran.append(block.line)
    assert len(ran) >= 5, ran
