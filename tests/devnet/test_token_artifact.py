"""The committed token artifact is exactly what the committed source compiles to."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = REPO / "bindu" / "devnet" / "contracts"


def test_artifact_matches_a_fresh_compile():
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; the devnet needs it (see Makefile)")
    # Run from the repo root: compile.mjs finds node_modules/solc from there.
    done = subprocess.run(
        [node, str(CONTRACTS / "compile.mjs"), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout


def test_artifact_records_the_source_hash_and_fixed_settings():
    artifact = json.loads((CONTRACTS / "EIP3009Token.json").read_text())
    source = (CONTRACTS / "EIP3009Token.sol").read_bytes()
    assert artifact["sourceSha256"] == hashlib.sha256(source).hexdigest()
    assert artifact["settings"] == {
        "optimizer": {"enabled": True, "runs": 200},
        "evmVersion": "cancun",
        "metadata": {"bytecodeHash": "none"},
    }
    assert artifact["compilerVersion"].startswith("0.8.37+")
    assert source.startswith(b"// SPDX-License-Identifier: MIT\n")
    assert artifact["bytecode"].startswith("0x") and artifact["deployedBytecode"].startswith("0x")
