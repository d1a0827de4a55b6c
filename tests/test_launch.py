"""Entry points: --help, and one-line errors for bad config values, data and
requests."""

import json
import os
import subprocess
import sys

import pytest

from tests.child_env import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = [
    "train",
    "eval",
    "sample",
    "build_data",
    "build_index",
    "encode_text",
    "export",
    "serve",
    "loadtest",
]


def _run(*args, timeout=300):
    env = child_env(TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help(name):
    out = _run(f"launch.{name}", "--help")
    text = out.stdout + out.stderr
    # absl prints the module docstring and its flags, then exits with 1.
    assert out.returncode in (0, 1), text[-2000:]
    assert "Traceback" not in text
    assert f"launch/{name}.py" in text or "USAGE" in text
    assert "--workdir" in text or "--data_dir" in text


def _train_smoke(tmp_path, *args):
    """launch.train on the smoke config into tmp_path/w, with `args` added."""
    return _run(
        "launch.train",
        "--config",
        "experiments/t2i_shapes.py:smoke",
        "--workdir",
        str(tmp_path / "w"),
        *args,
    )


def _error_lines(out):
    return [line for line in out.stderr.splitlines() if line.startswith("error:")]


def test_bad_config_value_is_one_line(tmp_path):
    out = _train_smoke(tmp_path, "--config.optim.name=sgdx")
    assert out.returncode == 2
    assert _error_lines(out) == [
        "error: config.optim.name='sgdx' is not one of ('adamw', 'adafactor')"
    ]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()  # nothing written for a bad config


def test_missing_dataset_is_one_line(tmp_path):
    out = _run(
        "launch.train",
        "--config",
        "experiments/t2i_shapes.py:smoke",
        "--workdir",
        str(tmp_path / "w"),
        f"--config.data.data_dir={tmp_path / 'nodata'}",
    )
    assert out.returncode == 2, out.stderr[-2000:]
    lines = _error_lines(out)
    assert len(lines) == 1 and "nodata" in lines[0] and "build_data" in lines[0], lines
    assert "Traceback" not in out.stderr


def test_a_directory_under_a_dangling_link_names_the_link(
    tmp_path, monkeypatch, capsys
):
    from launch import common

    (tmp_path / "data").symlink_to(tmp_path / "gone")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        common.run_main(lambda: os.makedirs("data/vocab", exist_ok=True))
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        len(lines) == 1
        and f"(data -> {tmp_path / 'gone'} points to nothing)" in lines[0]
    )
    # Any other missing file is reported as it was.
    with pytest.raises(SystemExit):
        common.run_main(lambda: open("absent.txt"))
    assert "points to nothing" not in capsys.readouterr().err


def test_library_info_lines_are_filtered_warnings_kept():
    import logging

    from launch import common

    own = os.path.join(ROOT, "imagen_jax", "train.py")
    lib = os.path.join(os.path.dirname(os.__file__), "site-packages", "orbax", "x.py")

    def record(path, level):
        return logging.LogRecord("absl", level, path, 1, "m", None, None)

    f = common._OwnInfo()
    assert f.filter(record(own, logging.INFO))
    assert not f.filter(record(lib, logging.INFO))
    assert f.filter(record(lib, logging.WARNING))
    assert f.filter(record(lib, logging.ERROR))


@pytest.mark.parametrize(
    "override,line",
    [
        (
            "--config.optim.lrr=1",
            "error: the config has no field 'lrr' (--config.optim.lrr=1);"
            ' did you mean "lr" instead of "lrr"?',
        ),
        (
            "--config.optim.lr=abc",
            "error: flag --config.optim.lr=abc: could not convert string to float:"
            " 'abc'",
        ),
        ("--no_such_flag=1", "error: Unknown command line flag 'no_such_flag'"),
    ],
)
def test_bad_override_is_one_line_before_main(tmp_path, override, line):
    out = _train_smoke(tmp_path, override)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "w").exists()


def test_sample_request_beyond_a_limit_is_one_line(tmp_path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"text": "a red circle", "steps": 10**8}))
    out = _run(
        "launch.sample",
        "--workdir",
        str(tmp_path / "no_run"),  # refused before the model is looked for
        "--instruction",
        str(request),
        "--out",
        str(tmp_path / "out.png"),
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert _error_lines(out) == [
        "error: request field 'steps' is 100000000; the limit is 1000"
    ]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out.png").exists()
