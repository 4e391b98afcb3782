"""A bad configuration is one clear line, and never shows a secret (no servers)."""

from __future__ import annotations

import subprocess
import sys


def linewatch(*args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "stream_app", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})}, cwd=cwd,
    )  # fmt: skip


def test_a_wrong_redis_setting_does_not_print_the_password(tmp_path):
    (tmp_path / "bad.toml").write_text(
        '[redis]\nmode = "cluster"\nurl = "rediss://redis:6379/1"\npassword = "Tr0ub4dor"\n'
    )
    done = linewatch("-c", str(tmp_path / "bad.toml"), "models", "list")
    sentinel = linewatch(
        "models", "list", env={"LINEWATCH_REDIS__MODE": "sentinel", "LINEWATCH_REDIS__PASSWORD": "hunter2"}
    )
    for run, secret, says in ((done, "Tr0ub4dor", "database 1"), (sentinel, "hunter2", "sentinel")):
        out = run.stdout + run.stderr
        assert run.returncode != 0 and secret not in out and "Traceback" not in out and says in out, out[-800:]


def test_bad_settings_and_a_missing_config_file_are_one_line_not_a_traceback(tmp_path):
    bad = linewatch("models", "list", env={"LINEWATCH_BATCHING__MAX_BATCH": "abc"})
    missing = linewatch("-c", str(tmp_path / "nope.toml"), "models", "list")
    for run, says in ((bad, "batching.max_batch"), (missing, "nope.toml")):
        out = run.stdout + run.stderr
        assert run.returncode != 0 and "Traceback" not in out and "╭" not in out and says in out, out[-800:]
        assert len(out.strip().splitlines()) <= 4, out


def test_settings_errors_never_carry_the_values_given():
    """The CLI prints one line, but a worker or a script that builds Settings shows pydantic's own message."""
    import pytest
    from pydantic import ValidationError

    from stream_app.settings import Settings

    with pytest.raises(ValidationError) as caught:
        Settings(redis={"mode": "sentinel", "password": "hunter2"})
    assert "hunter2" not in str(caught.value) and "sentinels" in str(caught.value)


def test_ordinary_cli_mistakes_are_one_line_not_a_traceback(tmp_path):
    """A corrupt manifest in `models list`, an unknown timm architecture, a model name with '..' for `retrain
    --once` or `models fit` (which trained fully before refusing the name)."""
    import numpy as np

    from models import RVAEScorer
    from stream_app.registry.versions import Registry

    env = {"LINEWATCH_REGISTRY_DIR": str(tmp_path / "registry"), "LINEWATCH_STATE_DIR": str(tmp_path / "state")}
    registry = Registry(tmp_path / "registry")
    scorer = RVAEScorer(3, n_layers=1, hidden=8, latent=2, device="cpu")
    scorer.fit(np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32), epochs=1)
    mv = registry.publish("press", scorer)
    (mv.path / "manifest.json").write_text('{"format": 1,\n')
    np.save(tmp_path / "ok.npy", np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32))
    (tmp_path / "w.safetensors").write_bytes(b"x")
    runs = {
        "manifest.json": linewatch("models", "list", env=env),
        "no_such_vit": linewatch("models", "backbone", "import", str(tmp_path / "w.safetensors"), "--arch",
                                 "no_such_vit", env=env),
        "model name": linewatch("retrain", "--once", "../x", env=env),
        "model name ": linewatch("models", "fit", "../evil", "--data", str(tmp_path / "ok.npy"), env=env),
    }  # fmt: skip
    for says, run in runs.items():
        out = run.stdout + run.stderr
        assert run.returncode != 0 and "Traceback" not in out and says.strip() in out, (says, out[-600:])
    assert "fit rvae" not in runs["model name "].stdout + runs["model name "].stderr  # refused before training
