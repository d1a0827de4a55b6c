"""The pod and cluster launchers: what they run, dry runs included.

gcloud, sbatch, srun and the workers' python are stand-ins on PATH that print
the arguments they were given, one per line.
"""

import os
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Arguments a careless quoting would split or mangle.
COMMAND = [
    "python",
    "-m",
    "launch.train",
    "--config",
    "experiments/t2i_shapes.py:res=64",
    "--workdir",
    "/shared/my run",
    "--config.data.data_dir=it's $HOME",
]


def _stand_in(directory, name):
    """An executable `name` in `directory` printing `name` and its arguments."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        # The working directory goes to stderr: the tests check it apart.
        f.write(f'#!/usr/bin/env bash\necho {name}\nprintf "%s\\n" "$@"\npwd >&2\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


def _bash(args, path_dir, env=None, cwd=ROOT):
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith("SLURM_")
    } | dict(env or {})
    full_env["PATH"] = f"{path_dir}:{os.environ['PATH']}"
    return subprocess.run(
        args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60
    )


def _args_of(out, name):
    """The arguments a stand-in printed (its name, then one per line)."""
    lines = out.stdout.splitlines()
    assert lines and lines[0] == name, out.stdout + out.stderr
    return lines[1:]


def _pod(*args, **kwargs):
    return _bash(["bash", "launch/tpu_pod.sh", *args], **kwargs)


def test_tpu_pod_runs_the_command_on_every_worker(tmp_path):
    bin_dir = tmp_path / "bin"
    _stand_in(bin_dir, "gcloud")
    flags = ["--tpu", "my-v4", "--zone", "us-central2-b", "--project", "p1"]
    out = _pod(
        *flags, "--dir", str(tmp_path / "repo"), "--", *COMMAND, path_dir=bin_dir
    )
    assert out.returncode == 0, out.stderr
    args = _args_of(out, "gcloud")
    assert args[:7] == [
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "my-v4",
        "--zone=us-central2-b",
        "--project=p1",
    ]
    assert args[7] == "--worker=all"
    assert len(args) == 9 and args[8].startswith("--command=")

    # What a worker's shell does with --command: the venv's python gets the
    # command's arguments intact, plus --distributed.
    _stand_in(tmp_path / "repo" / ".venv" / "bin", "python")
    worker = subprocess.run(
        ["bash", "-c", args[8].removeprefix("--command=")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert _args_of(worker, "python") == [*COMMAND[1:], "--distributed"]


def test_tpu_pod_dry_run_prints_what_it_would_run(tmp_path):
    bin_dir = tmp_path / "bin"
    _stand_in(bin_dir, "gcloud")
    flags = ["--tpu", "my-v4", "--zone", "europe-west4-a", "--", *COMMAND]
    dry = _pod("--dry_run", *flags, path_dir=tmp_path / "nothing")
    assert dry.returncode == 0, dry.stderr
    (line,) = dry.stdout.splitlines()
    assert line.startswith("gcloud compute tpus tpu-vm ssh my-v4 ")
    assert "--worker=all" in line and "--distributed" in line
    # The printed line, run by a shell, is exactly the real run.
    replayed = _bash(["bash", "-c", line], path_dir=bin_dir)
    assert _args_of(replayed, "gcloud") == _args_of(
        _pod(*flags, path_dir=bin_dir), "gcloud"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zone", "z", "--", "python"], "--tpu NAME is required"),
        (["--tpu", "t", "--", "python"], "--zone ZONE is required"),
        (["--tpu", "t", "--zone", "z"], "no command"),
        (["--tpu", "t", "--zone", "z", "python"], "unknown option python"),
    ],
)
def test_tpu_pod_usage_errors_are_one_line(tmp_path, args, message):
    out = _pod(*args, path_dir=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and message in out.stderr
    assert len(out.stderr.splitlines()) == 1


def _slurm(*args, **kwargs):
    return _bash(["bash", "launch/slurm.sh", *args], **kwargs)


def test_slurm_submits_itself_outside_a_job(tmp_path):
    _stand_in(tmp_path, "sbatch")
    out = _slurm(
        "--nodes", "2", "--gpus_per_node", "4", "--", *COMMAND, path_dir=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert _args_of(out, "sbatch") == [
        "--nodes=2",
        "--gpus-per-node=4",
        "launch/slurm.sh",
        "--",
        *COMMAND,
    ]


def test_slurm_job_starts_one_task_per_gpu(tmp_path):
    _stand_in(tmp_path / "bin", "srun")
    # sbatch runs a copy of the script, in its spool directory.
    spool = tmp_path / "spool"
    spool.mkdir()
    with open(os.path.join(ROOT, "launch", "slurm.sh")) as f:
        (spool / "slurm_script").write_text(f.read())
    job = {
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_GPUS_PER_NODE": "a100:4",
        "SLURM_SUBMIT_DIR": ROOT,
    }
    out = _bash(
        ["bash", "slurm_script", "--", *COMMAND],
        path_dir=tmp_path / "bin",
        env=job,
        cwd=spool,
    )
    assert out.returncode == 0, out.stderr
    assert _args_of(out, "srun") == [
        "--nodes=2",
        "--ntasks=8",
        "--ntasks-per-node=4",
        "--kill-on-bad-exit=1",
        "--label",
        *COMMAND,
        "--distributed",
    ]
    assert out.stderr.strip() == ROOT  # srun ran in the submission directory


def test_slurm_dry_run_prints_the_submission_and_the_job(tmp_path):
    for name in ("sbatch", "srun"):
        _stand_in(tmp_path / "bin", name)
    flags = ["--nodes", "3", "--gpus_per_node", "8", "--", *COMMAND]
    dry = _slurm("--dry_run", *flags, path_dir=tmp_path / "nothing")
    assert dry.returncode == 0, dry.stderr
    submit, step = dry.stdout.splitlines()
    assert submit.startswith("sbatch --nodes=3 --gpus-per-node=8 launch/slurm.sh -- ")
    assert step.startswith("srun --nodes=3 --ntasks=24 --ntasks-per-node=8 ")
    assert step.endswith(" --distributed")
    replayed = _bash(["bash", "-c", submit], path_dir=tmp_path / "bin")
    real = _slurm(*flags, path_dir=tmp_path / "bin")
    assert _args_of(replayed, "sbatch") == _args_of(real, "sbatch")
    replayed = _bash(["bash", "-c", step], path_dir=tmp_path / "bin")
    assert _args_of(replayed, "srun")[-len(COMMAND) - 1 :] == [
        *COMMAND,
        "--distributed",
    ]


def test_slurm_job_without_a_gpu_count_is_one_line(tmp_path):
    job = {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "1"}
    out = _slurm("--", "python", path_dir=tmp_path, env=job)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "--gpus_per_node" in out.stderr
