"""Evaluates a run: `python -m launch.eval --config experiments/X.py --workdir DIR`.

Writes DIR/eval/results.json, results.md, report.html, plots and sample
grids; prints the table. With `--sweep NAME` it runs the experiment file's
`sweeps()[NAME]` (checkpoints x sampler x steps x guidance x tasks), skipping
the cells results.json already holds, so a killed sweep resumes. With
`--record FILE` the rows also go to FILE with this command, the machine and
the date (a record for docs/results/).
"""

import shlex
import sys

from absl import flags
from ml_collections import config_flags

from imagen_jax import config_utils
from launch import common

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Workdir of the training run.")
flags.DEFINE_string(
    "sweep", None, "Run this sweep of the experiment file's sweeps() (resumable)."
)
flags.DEFINE_string(
    "embedder",
    "",
    "Embedder workdir whose image tower gives the FID/KID features (default: "
    "the run's retrieval/embedder; without one those rows say so).",
)
flags.DEFINE_string(
    "record",
    "",
    "Also write the rows to this JSON file with the command, the workdir, the "
    "machine and the date (a record for docs/results/).",
)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _sweep_cells(name: str) -> list[dict]:
    """The cells of sweep `name` in the experiment file of --config."""
    # The file of `--config FILE:ARGS`.
    path = config_flags.get_config_filename(FLAGS["config"]).split(":")[0]
    module = config_utils.load_experiment(path)
    found = module.sweeps() if hasattr(module, "sweeps") else {}
    if name not in found:
        raise ValueError(f"--sweep {name!r}: {path} defines the sweeps {sorted(found)}")
    return found[name]


def _eval():
    from imagen_jax.evaluation import evaluate, report, sweep

    cells = _sweep_cells(FLAGS.sweep) if FLAGS.sweep else [{}]
    rows = sweep.run(
        FLAGS.config,
        FLAGS.workdir,
        cells,
        embedder=FLAGS.embedder,
        rerun=not FLAGS.sweep,
    )
    # A sweep's rows are many: its headline table; one setting's: every row.
    table = report.headline_markdown if FLAGS.sweep else evaluate.markdown_table
    print(table(rows))
    print(f"results: {FLAGS.workdir}/eval/results.json, report.html")
    if FLAGS.record:
        command = shlex.join(["python", "-m", "launch.eval", *sys.argv[1:]])
        report.write_record(FLAGS.record, rows, command=command, model=FLAGS.workdir)
        print(f"record: {FLAGS.record}")


if __name__ == "__main__":
    common.run(_eval)
