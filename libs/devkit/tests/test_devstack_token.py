"""`make token` as the README shows it: the dev stack's secret, and a workspace and role of choice."""

import os
import secrets
import subprocess
from pathlib import Path

import jwt

ROOT = Path(__file__).parents[3]


def make_token(data: Path, *variables: str, environ: dict[str, str] | None = None) -> dict:
    secret = secrets.token_hex(32)
    data.mkdir(exist_ok=True)
    (data / "env").write_text(f"RAWDRIVE_JWT_SECRET={secret}\n")
    printed = subprocess.run(
        ["make", "-s", "token", f"DATA={data}", *variables], cwd=ROOT, env=environ or dict(os.environ),
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    return jwt.decode(printed.strip(), secret, algorithms=["HS256"])


def test_make_token_is_for_workspace_dev_as_admin_by_default(tmp_path):
    assert make_token(tmp_path / "data")["workspaces"] == {"dev": "admin"}


def test_make_token_takes_a_workspace_and_a_role(tmp_path):
    claims = make_token(tmp_path / "data", "WORKSPACE=acme", "ROLE=viewer")
    assert claims["workspaces"] == {"acme": "viewer"}


def test_make_token_ignores_a_workspace_variable_of_the_environment(tmp_path):
    # CI systems set WORKSPACE to a folder; only `make token WORKSPACE=...` chooses the workspace.
    claims = make_token(tmp_path / "data", environ={**os.environ, "WORKSPACE": "/var/ci/job", "ROLE": "viewer"})
    assert claims["workspaces"] == {"dev": "admin"}
