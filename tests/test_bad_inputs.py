"""The catalogue of docs/RELIABILITY.md: every bad input gives one clear line and exit code 2.

Each case runs `thermorl train` (the typer app in-process, so the 10 s torch/transformers import
is paid once; `test_real_entry_point_*` runs the installed command in a subprocess) and checks:
exit code 2, exactly one line on stderr starting with ``error:``, no traceback, no run
directory left behind, and the existing run beside it byte-for-byte unchanged.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from typer.testing import CliRunner

TINY = [
    "model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
    "task.eval_size=20", "train.eval_avg_problems=4", "train.eval_avg_k=2", "train.threads=1",
    "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8", "log.progress=false",
    "log.plot=false", "log.tensorboard=false",
]


def _sets(*overrides: str) -> list[str]:
    return [arg for item in (*TINY, *overrides) for arg in ("--set", item)]


@pytest.fixture(autouse=True)
def _quiet_transformers_and_keep_threads():
    """What `thermorl.cli.main` sets up before the app runs; torch threads restored after each case."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory) -> Path:
    """A finished two-step run with two checkpoints, which no bad input may touch."""
    run = tmp_path_factory.mktemp("existing") / "run"
    result = CliRunner().invoke(
        _app(), ["train", "--out", str(run), "--steps", "2", *_sets("train.checkpoint_every=1")]
    )
    assert result.exit_code == 0, result.stderr
    return run


def _app():
    from thermorl.cli import app

    return app


def _fingerprint(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def fails_cleanly(args: list[str], out: Path | None, existing_run: Path) -> str:
    """Run `thermorl train ARGS`; assert the contract of a bad input; return the error line."""
    before = _fingerprint(existing_run)
    result = CliRunner().invoke(_app(), ["train", *args])
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    if out is not None:
        assert not out.exists(), f"a failed start left {sorted(out.rglob('*'))}"
    assert _fingerprint(existing_run) == before, "an existing run was modified"
    print(lines[0])  # shown with `pytest -s`: the messages listed in docs/RELIABILITY.md
    return lines[0]


def _train(tmp_path: Path, *overrides: str, steps: int = 2) -> tuple[list[str], Path]:
    out = tmp_path / "run"
    return ["--out", str(out), "--steps", str(steps), *_sets(*overrides)], out


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=3", "unknown config key train.stepz (known: "),
        ("train.seed=abc", "train.seed must be an integer, got 'abc'"),
        ("algorithm.lr=fast", "algorithm.lr must be a number, got 'fast'"),
        ("algorithm.lr=.nan", "algorithm.lr must be finite, got nan"),
        ("rollout.group_size=1", "rollout.group_size must be >= 2, got 1"),
        ("rollout.temperature_max=0.01", "rollout.temperature_min must be < temperature_max, got 0.05 >= 0.01"),
        ("task.reward_timeout_s=0", "task.reward_timeout_s must be > 0, got 0.0"),
        ("task.max_result=100000", "task.max_operand and task.max_result must be <= 9999"),
        ("train.max_bad_steps=0", "train.max_bad_steps must be > 0, got 0"),
        ("temperature.controller=warm", "temperature.controller must be one of"),
        ("train.seed=99999999999999999999", "train.seed must be in [0, 2**62), got 99999999999999999999"),
        ("algorithm.lr=1" + "0" * 400, "algorithm.lr must be finite, got an integer of 401 digits"),
    ],
    ids=["unknown-key", "wrong-type-int", "wrong-type-float", "nan-value", "bad-value", "temperature-range",
         "reward-timeout", "task-number-range", "max-bad-steps", "unknown-controller", "seed-out-of-range",
         "float-overflow"],
)
def test_config_override(tmp_path, existing_run, override, message):
    args, out = _train(tmp_path, override)
    assert message in fails_cleanly(args, out, existing_run)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"train: [steps: 3\n", "is not valid YAML: "),
        (b"- train\n- model\n", "must hold a mapping of sections, got list"),
        (b"train:\n  steps: 3\n  seeed: 1\n", "unknown config key train.seeed"),
        (b"algorithm: 7\n", "algorithm must be a mapping, got int"),
        (b"model:\n  path: \xff\xfe\n", "cannot read config file"),
    ],
    ids=["unreadable-yaml", "not-a-mapping", "unknown-nested-key", "section-not-a-mapping", "non-utf8"],
)
def test_config_file(tmp_path, existing_run, content, message):
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    args, out = _train(tmp_path)
    assert message in fails_cleanly(["--config", str(config), *args], out, existing_run)


def test_config_file_missing(tmp_path, existing_run):
    args, out = _train(tmp_path)
    line = fails_cleanly(["--config", str(tmp_path / "nope.yaml"), *args], out, existing_run)
    assert f"config file not found: {tmp_path / 'nope.yaml'}" in line


# --------------------------------------------------------------------------- model


def test_model_path_missing(tmp_path, existing_run):
    args, out = _train(tmp_path, f"model.path={tmp_path / 'no-model'}")
    assert f"model.path {tmp_path / 'no-model'} is not a directory" in fails_cleanly(args, out, existing_run)


def test_model_directory_with_garbage_config(tmp_path, existing_run):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{not json")
    args, out = _train(tmp_path, f"model.path={model}")
    line = fails_cleanly(args, out, existing_run)
    assert f"cannot load a causal LM from {model}: " in line and "not a valid JSON file" in line


def test_model_directory_without_weights(tmp_path, existing_run):
    from thermorl.models.tiny import build_char_tokenizer, build_tiny_model

    model = tmp_path / "model"
    build_tiny_model(100, 32, 1, 2).config.save_pretrained(model)
    build_char_tokenizer().save_pretrained(model)
    args, out = _train(tmp_path, f"model.path={model}")
    assert f"cannot load a causal LM from {model}: " in fails_cleanly(args, out, existing_run)


def test_tokenizer_larger_than_model_vocabulary(tmp_path, existing_run):
    from thermorl.models.tiny import build_char_tokenizer, build_tiny_model

    model = tmp_path / "model"
    build_tiny_model(50, 32, 1, 2).save_pretrained(model)
    build_char_tokenizer().save_pretrained(model)
    args, out = _train(tmp_path, f"model.path={model}")
    line = fails_cleanly(args, out, existing_run)
    assert f"tokenizer in {model} has 100 tokens but the model's vocabulary is 50" in line


def test_model_with_nan_weights(tmp_path, existing_run):
    from thermorl.models.tiny import build_char_tokenizer, build_tiny_model

    model = tmp_path / "model"
    tiny = build_tiny_model(100, 32, 1, 2)
    with torch.no_grad():
        tiny.model.norm.weight[0] = float("nan")
    tiny.save_pretrained(model)
    build_char_tokenizer().save_pretrained(model)
    args, out = _train(tmp_path, f"model.path={model}")
    assert f"model {model} has NaN or inf parameters" in fails_cleanly(args, out, existing_run)


# --------------------------------------------------------------------------- data (task.name=math)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "is neither a shipped benchmark (math500, aime24, amc23, minerva, olympiadbench, gsm8k_test, "
               "gsm8k_train) nor an existing path"),
        (b"", "is empty"),
        (b'{"problem": "1+1", "answer": "2"}\n{"problem": "2+2", "answer": \n', "line 2: malformed JSON (Expecting value)"),
        (b'{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\n',
         "line 2: missing field 'answer' (fields: problem; set task.answer_field)"),
        (b'{"problem": "1+1", "answer": "2"}\n{"problem": "\xff", "answer": "4"}\n', "line 2: not valid UTF-8 (byte 47)"),
        (b'[1, 2]\n', "line 1: expected a JSON object, got list"),
    ],
    ids=["missing-file", "empty-file", "malformed-json-line", "missing-field", "non-utf8", "row-not-an-object"],
)
def test_math_dataset(tmp_path, existing_run, content, message):
    data = tmp_path / "train.jsonl"
    if content is not None:
        data.write_bytes(content)
    args, out = _train(tmp_path, "task.name=math", f"task.dataset={data}")
    line = fails_cleanly(args, out, existing_run)
    shown = str(data) if content is not None else repr(str(data))
    assert f"dataset {shown} " in line and message in line


# --------------------------------------------------------------------------- reward function

USER_REWARDS = Path(__file__).resolve().parent / "user_rewards.py"


@pytest.mark.parametrize(
    "function, extra, message",
    [
        ("raises", [], "raised ValueError: boom (task.reward_fail_fast is on)"),
        ("hangs", ["task.reward_timeout_s=0.2"], "did not return within 0.2 s (task.reward_fail_fast is on)"),
        ("wrong_length", [], "returned 21 rewards for 20 completions"),  # one call per batch (TRL convention)
        ("nan", [], "returned nan for completion 0 (task.reward_fail_fast is on)"),
        ("not_a_number", [], "returned str 'yes' for completion 0; it must return a number or None"),
    ],
    ids=["raises", "hangs", "wrong-length", "nan", "non-number"],
)
def test_reward_function_fault_with_fail_fast(tmp_path, existing_run, function, extra, message):
    spec = f"{USER_REWARDS}:{function}"
    args, out = _train(tmp_path, f"task.reward={spec}", "task.reward_fail_fast=true", *extra)
    started = time.time()
    assert f"error: reward function {spec} {message}" == fails_cleanly(args, out, existing_run)
    assert time.time() - started < 20, "a hanging reward function must be cut off by its timeout"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("os.system", "task.reward 'os.system' must look like 'package.module:function' or 'file.py:function'"),
        ("no_such_module:score", "task.reward: cannot import no_such_module: ModuleNotFoundError: "),
        (f"{USER_REWARDS}:missing", f"task.reward: {USER_REWARDS} has no function 'missing'"),
    ],
    ids=["not-module-colon-function", "module-not-found", "function-not-found"],
)
def test_reward_function_spec(tmp_path, existing_run, spec, message):
    args, out = _train(tmp_path, f"task.reward={spec}")
    assert message in fails_cleanly(args, out, existing_run)


# --------------------------------------------------------------------------- output directory


def test_output_dir_exists_and_is_not_a_run(tmp_path, existing_run):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    args = ["--out", str(out), "--steps", "2", *_sets()]
    assert f"output directory {out} exists and is not empty" in fails_cleanly(args, None, existing_run)
    assert (out / "notes.txt").read_text() == "precious"
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_output_dir_is_a_file(tmp_path, existing_run):
    out = tmp_path / "file"
    out.write_text("x")
    args = ["--out", str(out), "--steps", "2", *_sets()]
    assert f"output directory {out} exists and is a file (choose another --out)" in fails_cleanly(
        args, None, existing_run
    )
    assert out.read_text() == "x"


def test_output_dir_is_an_existing_run(tmp_path, existing_run):
    args = ["--out", str(existing_run), "--steps", "2", *_sets()]
    line = fails_cleanly(args, None, existing_run)
    assert f"output directory {existing_run} is an existing run (continue it with --resume {existing_run})" in line


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount -t tmpfs (needs root/CAP_SYS_ADMIN); unmounted afterwards."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    gc.collect()  # a failed run's traceback may still reference memory-mapped checkpoint tensors
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def test_output_dir_not_writable(tmp_path, existing_run, mount_tmpfs):
    if os.geteuid() == 0:  # root ignores permission bits: use a read-only file system instead
        parent = mount_tmpfs("readonly", "ro,size=1m")
        reason = "Read-only file system"
    else:
        parent = tmp_path / "readonly"
        parent.mkdir(mode=0o555)
        reason = "Permission denied"
    out = parent / "run"
    line = fails_cleanly(["--out", str(out), "--steps", "2", *_sets()], out, existing_run)
    assert f"cannot create output directory {out}: {reason}" in line


def test_disk_full_while_writing_a_checkpoint(tmp_path, existing_run, mount_tmpfs):
    disk = mount_tmpfs("small-disk", "size=48k")  # holds config and metrics, not a checkpoint
    out = disk / "run"
    args = ["--out", str(out), "--steps", "2", *_sets("train.checkpoint_every=1")]
    line = fails_cleanly(args, out, existing_run)
    assert f"cannot write checkpoint {out / 'checkpoints' / 'step-000001'}: No space left on device" in line
    assert os.listdir(disk) == [], "the failed run must free what it wrote"


def test_disk_full_while_resuming_keeps_the_run_resumable(tmp_path, existing_run, mount_tmpfs):
    from thermorl.runtime.checkpoint import list_checkpoints, verify_checkpoint

    disk = mount_tmpfs("full-disk", "size=4m")
    run = disk / "run"
    shutil.copytree(existing_run, run)
    stats = os.statvfs(disk)
    with open(disk / "filler", "wb") as filler:  # leave 64 kB: enough for logs, not for a checkpoint
        filler.write(b"\0" * (stats.f_bavail * stats.f_frsize - 64 * 1024))
    before = _fingerprint(run / "checkpoints")
    line = fails_cleanly(["--resume", str(run), "--steps", "4"], None, existing_run)
    assert f"cannot write checkpoint {run / 'checkpoints' / 'step-000003'}: No space left on device" in line
    assert _fingerprint(run / "checkpoints") == before
    assert [verify_checkpoint(p) for p in list_checkpoints(run)] == [True, True]
    assert not list((run / "checkpoints").glob(".tmp-*"))


# --------------------------------------------------------------------------- resume


def test_resume_a_directory_that_is_not_a_run(tmp_path, existing_run):
    line = fails_cleanly(["--resume", str(tmp_path)], None, existing_run)
    assert f"cannot resume {tmp_path}: not a thermorl run directory (no config.yaml)" in line


def test_resume_with_every_checkpoint_corrupted(tmp_path, existing_run):
    run = tmp_path / "run"
    shutil.copytree(existing_run, run)
    for manifest in run.glob("checkpoints/*/manifest.json"):
        digests = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({name: "0" * 64 for name in digests}))
    before = _fingerprint(run)
    line = fails_cleanly(["--resume", str(run), "--steps", "4"], None, existing_run)
    assert f"cannot resume {run}: no complete checkpoint in {run / 'checkpoints'} (2 partial or corrupted)" in line
    assert _fingerprint(run) == before


def test_resume_a_finished_run(existing_run):
    line = fails_cleanly(["--resume", str(existing_run)], None, existing_run)
    assert f"run {existing_run} has finished its 2 steps (continue it with a larger --steps)" in line


def test_resume_with_a_model_that_does_not_match_the_checkpoint(existing_run):
    line = fails_cleanly(
        ["--resume", str(existing_run), "--steps", "4", "--set", "model.hidden_size=64"], None, existing_run
    )
    assert "does not match the configured model: model.embed_tokens.weight has shape (100, 32) there" in line


def test_resume_with_out_or_config(tmp_path, existing_run):
    line = fails_cleanly(["--resume", str(existing_run), "--out", str(tmp_path / "x")], tmp_path / "x", existing_run)
    assert "--resume takes the run's own config.yaml and directory; drop --config/--out" in line


# --------------------------------------------------------------------------- the installed command


def test_real_entry_point_prints_one_line_and_exits_2(tmp_path):
    result = run_cli("train", "--resume", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: cannot resume {tmp_path}: not a thermorl run directory (no config.yaml)"
