"""Per-epoch weight snapshots of a run: the weights after each kept epoch, written resumably,
outside the run id."""

import numpy as np
import pytest

from lbgap_tf import data, train

SPEC = data.SyntheticSpec(num_train=256, num_test=64, input_shape=(16,), num_classes=4, seed=0)


def _config(**overrides):
    values = dict(model="F1", dataset="synthetic", synthetic=SPEC, regime="SB", batch_size=64,
                  epochs=2, eval_batch_size=256, steps_per_call=4, seed=1)
    values.update(overrides)
    return train.TrainConfig(**values)


class _Stop(Exception):
    pass


def _stop_after_first_epoch(epoch, row):
    if epoch == 1:
        raise _Stop


def test_snapshots_are_the_weights_after_their_epochs_and_survive_a_resume(tmp_path):
    splits = train.load_data(_config())
    config = _config(snapshot_epochs=(1, 2))
    with pytest.raises(_Stop):  # Killed after epoch 1: its snapshot is already on disk.
        train.train(config, *splits, run_dir=str(tmp_path / "run"), quiet=True,
                    on_epoch_end=_stop_after_first_epoch)
    assert (tmp_path / "run" / train.SNAPSHOT_DIR / "epoch0001.npz").exists()
    result = train.train(config, *splits, run_dir=str(tmp_path / "run"), quiet=True)
    final = train.load_x0(train.snapshot_path(str(tmp_path / "run"), 2))
    for kept, weight in zip(final, result.model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, weight)
    # Epoch 1's snapshot is the final model of the same run trained for one epoch only.
    one_epoch = train.train(_config(epochs=1), *splits, run_dir=str(tmp_path / "one"),
                            quiet=True)
    first = train.load_x0(train.snapshot_path(str(tmp_path / "run"), 1))
    for kept, weight in zip(first, one_epoch.model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, weight)
    assert train.snapshot_path(str(tmp_path / "run"), 0).endswith(train.X0_FILE)


def test_snapshots_are_recorded_but_not_part_of_the_run_id():
    description = {"strategy": "default", "replicas": 1, "workers": 1}
    plain, kept = _config(), _config(snapshot_epochs=(1, 2))
    assert train.run_id(plain, description) == train.run_id(kept, description)
    assert "snapshot_epochs" not in train.config_dict(plain)
    assert train.config_dict(kept)["snapshot_epochs"] == (1, 2)


@pytest.mark.parametrize("epochs", [(2, 1), (0,), (3,), (1, 1)])
def test_bad_snapshot_epochs_are_refused(epochs):
    with pytest.raises(train.TrainError, match="snapshot_epochs must be strictly increasing"):
        _config(snapshot_epochs=epochs)
