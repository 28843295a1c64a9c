"""The end-to-end tests' learning check (:func:`conftest.assert_learned`) fails for a network that did not train:
its final weights are its initial ones, so it closes none of its gap to a perfect ranking."""
import shutil

import pytest

from conftest import assert_learned
from inference.untrained_model import untrained_model, use_folders, write_case, write_labels


def test_a_model_whose_weights_did_not_change_fails(tmp_path, monkeypatch):
    model = untrained_model(tmp_path / 'model')
    use_folders(monkeypatch, model)
    fold = model.model_folder / 'fold_0'
    shutil.copy(fold / 'checkpoint_final.pth', fold / 'checkpoint_initial.pth')
    held_out = tmp_path / 'held_out'
    for seed, case in enumerate(('a', 'b')):
        write_case(held_out / 'imagesTr', case, seed=seed)
        write_labels(held_out / 'labelsTr', case)
    with pytest.raises(AssertionError, match=r'0% of the gap to 1 closed, not more than 40%'):
        assert_learned(model.model_folder, held_out)
