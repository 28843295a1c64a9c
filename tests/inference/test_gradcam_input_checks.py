"""``nnUNetv2_mm_ciml_gradcam`` checks its input files (every voxel, as the converter) before it loads the model."""
from __future__ import annotations

import pytest

from inference.untrained_model import (BAD_KINDS, PROBLEM, same_tree, untrained_model, use_folders, write_bad_image,
                                       write_case)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return untrained_model(tmp_path_factory.mktemp('untrained'))


@pytest.mark.parametrize('kind', BAD_KINDS)
def test_gradcam_refuses_bad_files_by_name_before_loading_the_model(kind, model, tmp_path, monkeypatch, capsys):
    from nnunet_missingmod.methods.ciml.gradcam import main
    use_folders(monkeypatch, model)
    images, out = tmp_path / 'in', tmp_path / 'out'
    files = write_case(images, 'x', channels=(0, 2, 3))
    files[1] = write_bad_image(images / 'x_0001.nii.gz', kind)
    before = same_tree(images)
    # the untrained model is no CIML model: that message would come after loading it
    status = main(['-d', '999', '-c', '3d_fullres', '-tr', 'nnUNetTrainer', '-f', '0', '-device', 'cpu',
                   '-i', *[str(files[c]) for c in range(4)], '-o', str(out)])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert err.splitlines()[-1].startswith(f'nnUNetv2_mm_ciml_gradcam: error: case x: {files[1]}: {PROBLEM[kind]}')
    assert not out.exists() and same_tree(images) == before
