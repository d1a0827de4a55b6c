"""Which phrasings of a task does a model read? Every template of the task
on the same scenes.

    python -m benchmarks.phrasing_probe --workdir runs/cpu_instruct \
        --task subject+style --examples 24 \
        --out docs/results/2026-12-08_s68_phrasing_probe.json

The evaluator's rows mix phrasings and scenes: each example draws its own
template, so a template's mean over its few examples (`by_template`) also
says how hard those scenes were. Here example i has the evaluator's scene,
conditions and target under every template (`tasks.make_example(template=)`;
an unseen paraphrase's fields in the training grammar), so two templates
differ in their words only, and their paired difference per example has the
scenes taken out. Sampling as the run's
config says (`config.sample`), with the evaluator's sampling seed. Each
template's headline score (O, or `score` for a vision task), its standard
error, and its paired difference from the mean over the templates with that
difference's standard error; `--unseen` adds the held-apart paraphrases.
Prints one line per template and the record.
"""

from __future__ import annotations

from absl import app, flags, logging

import benchmarks
from imagen_jax import xla_flags

xla_flags.apply_defaults()

flags.DEFINE_string("workdir", None, "The checkpoint's workdir.", required=True)
flags.DEFINE_string("task", None, "A task of `tasks.TASKS`.", required=True)
flags.DEFINE_integer("examples", 24, "Scenes, each phrased by every template.")
flags.DEFINE_bool("unseen", False, "Also the task's unseen paraphrases.")
flags.DEFINE_integer("seed", 1, "The examples' seed (the evaluator's is 1).")
flags.DEFINE_string("out", None, "Also write the JSON record to this file.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # progress and figures, not INFO lines
    from imagen_jax import inference, machine
    from imagen_jax.data import tasks
    from imagen_jax.evaluation import evaluate, phrasings

    loaded = inference.load(FLAGS.workdir)
    d, sample = loaded.config.data, loaded.config.sample
    if d.get("plain_text", False):
        raise ValueError(
            f"{FLAGS.workdir} trained without instruction words (data.plain_text): "
            "every template reads the same to it"
        )
    task = tasks.get_task(FLAGS.task)
    templates = list(task.templates)
    if FLAGS.unseen:
        templates += list(task.unseen_templates)
    batch_size = loaded.config.get("evals", {}).get("tasks", {}).get("batch_size", 24)
    generate = evaluate.generate_fn(loaded, sample.sampler)
    values, rows = {}, []
    for k, template in enumerate(templates):
        examples = phrasings.phrased(
            loaded, FLAGS.task, template, FLAGS.examples, FLAGS.seed
        )
        batch = evaluate._instruction_arrays(loaded, [e.instruction for e in examples])
        images = evaluate._generate_tasks(
            loaded, generate, batch, sample, batch_size, seed=77, label=f"template {k}"
        )
        head = [
            r
            for r in evaluate._task_rows(FLAGS.task, examples, images)
            if r["metric"] in evaluate.PER_EXAMPLE_METRICS
        ][0]
        values[template] = head["per_example"]
        rows.append(
            {
                "template": template,
                "unseen": template in task.unseen_templates,
                "metric": head["metric"],
                "value": head["value"],
                "se": head["se"],
                "per_example": head["per_example"],
            }
        )
        print(f"{head['value']:.3f} ±{head['se']:.3f}  {template}", flush=True)
    differences = phrasings.paired(values)
    for row in rows:
        row["vs_mean"], row["vs_mean_se"] = differences[row["template"]]
    record = {
        "workdir": FLAGS.workdir,
        "step": int(loaded.step),
        "task": FLAGS.task,
        "examples": FLAGS.examples,
        "sample": {k: sample.get(k) for k in ("sampler", "steps", "guidance")},
        "cpu": machine.cpu_model(),
        "templates": sorted(rows, key=lambda r: r["value"]),
    }
    benchmarks.emit(record, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
