"""Checkpoint integrity: checksums written at save, checked at every restore."""

import hashlib
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import t2i_shapes
from imagen_jax import checkpointing, train, train_state
from launch import common


def _state(seed: int) -> train_state.TrainState:
    """A tiny TrainState of random float32, which barely compresses: a step's
    largest file is ~45 KB, room for 4 KB of damage in its middle."""
    rng = np.random.default_rng(seed)

    def tree():
        return {"w": jnp.asarray(rng.standard_normal((64, 64), np.float32))}

    return train_state.TrainState(
        step=jnp.asarray(seed, jnp.int32),
        params=tree(),
        ema_params=tree(),
        opt_state={"mu": tree()},
    )


def _save(workdir, steps, keep=2):
    """Saves step s as `_state(s)` with data state {"next_index": s}."""
    mngr = checkpointing.manager(os.path.join(workdir, "checkpoints"), keep)
    for step in steps:
        checkpointing.save(mngr, step, _state(step), {"next_index": step})
    mngr.wait_until_finished()
    return mngr


def _damage(step_dir) -> str:
    """Overwrites 4 KB in the middle of the step's largest file; returns its
    path relative to the step."""
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(step_dir)
        for name in names
        if name != checkpointing.CHECKSUMS
    ]
    largest = max(files, key=os.path.getsize)
    size = os.path.getsize(largest)
    assert size > 8192, size
    with open(largest, "r+b") as f:
        f.seek(size // 2 - 2048)
        f.write(b"\xff" * 4096)
    return os.path.relpath(largest, step_dir)


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class _DataIter:
    def set_state(self, state):
        self.state = state


def test_each_step_is_checksummed_once_finalised(tmp_path):
    mngr = checkpointing.manager(str(tmp_path / "checkpoints"), keep=3)
    checkpointing.save(mngr, 1, _state(1), None)
    checkpointing.save(mngr, 2, _state(2), None)
    # Step 1 was summed when the save of step 2 began; step 2 once waited for.
    assert (tmp_path / "checkpoints" / "1" / checkpointing.CHECKSUMS).exists()
    mngr.wait_until_finished()
    for step in (1, 2):
        step_dir = tmp_path / "checkpoints" / str(step)
        sums = json.loads((step_dir / checkpointing.CHECKSUMS).read_text())["sha256"]
        files = {
            p.relative_to(step_dir).as_posix(): p
            for p in step_dir.rglob("*")
            if p.is_file() and p.name != checkpointing.CHECKSUMS
        }
        assert sorted(sums) == sorted(files)
        assert any(name.startswith("state/") for name in sums), sums
        for name, path in files.items():
            assert sums[name] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_damaged_file_is_named_at_restore(tmp_path):
    _save(str(tmp_path), [1, 2])
    step_dir = str(tmp_path / "checkpoints" / "2")
    name = _damage(step_dir)
    expected = (
        f"checkpoint {step_dir} is damaged: {name} does not match the checksum "
        "written at save"
    )
    mngr = checkpointing.manager(str(tmp_path / "checkpoints"))
    with pytest.raises(checkpointing.DamagedCheckpointError) as e:
        checkpointing.restore(mngr, _state(0))
    assert str(e.value) == expected
    with pytest.raises(checkpointing.DamagedCheckpointError) as e:
        checkpointing.restore_params(str(tmp_path), _state(0).params)
    assert str(e.value) == expected
    assert os.path.isdir(step_dir)  # only training resume sets a step aside


def test_missing_file_or_unreadable_checksums_are_damage(tmp_path):
    _save(str(tmp_path), [1])
    step_dir = tmp_path / "checkpoints" / "1"
    (step_dir / "state" / "_METADATA").unlink()
    with pytest.raises(
        checkpointing.DamagedCheckpointError, match="_METADATA is missing"
    ):
        checkpointing.restore_params(str(tmp_path), _state(0).params)
    (step_dir / checkpointing.CHECKSUMS).write_text('{"sha256": ')
    with pytest.raises(
        checkpointing.DamagedCheckpointError, match="checksums.json is unreadable"
    ):
        checkpointing.restore_params(str(tmp_path), _state(0).params)


def test_sampling_from_a_damaged_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    _save(str(tmp_path), [1])
    name = _damage(str(tmp_path / "checkpoints" / "1"))
    with pytest.raises(SystemExit) as e:
        common.run_main(
            lambda: checkpointing.restore_params(str(tmp_path), _state(0).params)
        )
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint "), lines
    assert f"1 is damaged: {name} does not match" in lines[0]


def test_resume_falls_back_past_a_damaged_step_and_keeps_it(tmp_path, caplog):
    workdir = str(tmp_path)
    mngr = _save(workdir, [1, 2])
    damaged = str(tmp_path / "checkpoints" / "2")
    name = _damage(damaged)
    data_iter = _DataIter()
    with caplog.at_level(logging.WARNING):
        state = train.restore_or_init(
            t2i_shapes.get_config("smoke"), workdir, _state(0), mngr, data_iter
        )
    assert int(state.step) == 1
    _assert_tree_equal(state, _state(1))
    assert data_iter.state == {"next_index": 1}
    assert f"{damaged} is damaged: {name}" in caplog.text
    # Set aside, not deleted: the damaged bytes are still there.
    assert not os.path.exists(damaged)
    assert os.path.getsize(os.path.join(damaged + ".damaged", name)) > 8192
    # Orbax lists only `<step>` directories, now and in a fresh manager.
    assert mngr.all_steps() == [1]
    assert checkpointing.manager(str(tmp_path / "checkpoints")).all_steps() == [1]
    # Training on saves step 2 again; rotation (keep 2) leaves `2.damaged` be.
    checkpointing.save(mngr, 2, _state(2), None)
    checkpointing.save(mngr, 3, _state(3), None)
    mngr.wait_until_finished()
    assert mngr.all_steps() == [2, 3]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "2.damaged", "3"]


def test_resume_with_every_step_damaged_raises_and_moves_nothing(tmp_path):
    mngr = _save(str(tmp_path), [1, 2])
    _damage(str(tmp_path / "checkpoints" / "1"))
    name = _damage(str(tmp_path / "checkpoints" / "2"))
    with pytest.raises(
        checkpointing.DamagedCheckpointError, match=f"2 is damaged: {name}"
    ):
        checkpointing.resume(mngr, _state(0))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_checkpoint_without_checksums_restores_with_a_warning(tmp_path, caplog):
    _save(str(tmp_path), [1])
    step_dir = tmp_path / "checkpoints" / "1"
    (step_dir / checkpointing.CHECKSUMS).unlink()
    mngr = checkpointing.manager(str(tmp_path / "checkpoints"))
    with caplog.at_level(logging.WARNING):
        state, _ = checkpointing.resume(mngr, _state(0))
        params, _ = checkpointing.restore_params(str(tmp_path), _state(0).params)
    _assert_tree_equal(state, _state(1))
    _assert_tree_equal(params, _state(1).ema_params)
    unverified = [r for r in caplog.records if "restoring it unverified" in r.message]
    assert len(unverified) == 2 and str(step_dir) in unverified[0].message


def test_unreadable_step_without_checksums_is_an_error_not_a_fallback(tmp_path):
    # Orbax's own errors may mean "another model", not damage: no fallback.
    mngr = _save(str(tmp_path), [1, 2])
    step_dir = tmp_path / "checkpoints" / "2"
    (step_dir / checkpointing.CHECKSUMS).unlink()
    (step_dir / "state" / "_METADATA").write_text("garbage")
    with pytest.raises(checkpointing.CheckpointError, match="2 cannot be restored"):
        checkpointing.resume(mngr, _state(0))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_undamaged_checkpoint_restores_bit_identically(tmp_path, caplog):
    mngr = _save(str(tmp_path), [1, 2])
    with caplog.at_level(logging.WARNING):
        state, data_state = checkpointing.resume(mngr, _state(0))
        params, step = checkpointing.restore_params(str(tmp_path), _state(0).params)
    _assert_tree_equal(state, _state(2))
    assert data_state == {"next_index": 2}
    assert step == 2
    _assert_tree_equal(params, _state(2).ema_params)
    assert "damaged" not in caplog.text and "unverified" not in caplog.text
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
