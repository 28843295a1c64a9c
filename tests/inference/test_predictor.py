"""The masked predictor: the case mask reaches every patch, missing channels are zeroed, stock networks get zero-filled input."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from torch import nn

from nnunet_missingmod.inference.case_files import prepare_case_files, scan_input_folder
from nnunet_missingmod.inference.predict import MissingModalityPredictor
from nnunet_missingmod.networks.base import MissingModalityNetwork
from nnunet_missingmod.networks.outputs import NetworkOutput

DATASET_JSON = {'channel_names': {'0': 'T1', '1': 'T1ce', '2': 'T2', '3': 'FLAIR'},
                'labels': {'background': 0, 'whole tumor': [1, 2, 3], 'tumor core': [2, 3], 'enhancing tumor': 3},
                'regions_class_order': [1, 2, 3], 'file_ending': '.nii.gz'}


# ----------------------------------------------------------------------------------------------- predictor unit tests
class RecordingNet(MissingModalityNetwork):
    """1x1x1 conv whose output also depends on the mask; records every mask and input it sees."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(4, 3, 1)
        self.mask_weight = nn.Parameter(torch.tensor([[1., 2., 3.], [4., 5., 6.], [7., 8., 9.], [1., 1., 1.]]))
        self.masks, self.inputs = [], []

    def forward_with_mask(self, x, availability):
        self.masks.append(availability.clone())
        self.inputs.append(x.clone())
        bias = availability.float() @ self.mask_weight
        return NetworkOutput(self.conv(x) + bias[:, :, None, None, None], {}, {})


class StockNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(4, 3, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


def manual_predictor(network, mirroring=False) -> MissingModalityPredictor:
    predictor = MissingModalityPredictor(use_mirroring=mirroring, device=torch.device('cpu'), allow_tqdm=False)
    predictor.network = network
    predictor.list_of_parameters = [network.state_dict()]
    predictor.dataset_json = DATASET_JSON
    predictor.configuration_manager = SimpleNamespace(patch_size=[8, 8, 8])
    predictor.label_manager = LabelManager(DATASET_JSON['labels'], DATASET_JSON['regions_class_order'])
    predictor.allowed_mirroring_axes = (0, 1, 2)
    return predictor


def case_data():
    torch.manual_seed(0)
    data = torch.zeros(4, 24, 16, 12)
    data[:, 2:10, 2:14, 2:10] = torch.randn(4, 8, 12, 8)
    data[1, 2:10, 2:8, 2:10] = 0  # a present modality that is zero in part of the brain
    return data


def test_predictor_passes_the_case_mask_to_every_patch_and_zeroes_missing_channels():
    net = RecordingNet()
    predictor = manual_predictor(net, mirroring=True)
    mask = np.array([False, True, False, True])
    logits = predictor.predict_logits_from_preprocessed_data(case_data(), mask)
    assert logits.shape == (3, 24, 16, 12)
    n_patches = 5 * 3 * 2  # patch 8, step 0.5: 24 -> 5 positions, 16 -> 3, 12 -> 2
    assert len(net.masks) == n_patches * 8  # 7 mirrored copies per patch
    for seen, x in zip(net.masks, net.inputs):
        assert seen.tolist() == [mask.tolist()]
        assert x[:, [0, 2]].abs().sum() == 0  # missing channels zeroed before the network
    # background patches (all channels zero) and patches where a present channel is zero keep the case mask
    assert any(x.abs().sum() == 0 for x in net.inputs)
    assert any(x[:, 1].abs().sum() == 0 and x[:, 3].abs().sum() > 0 for x in net.inputs)
    assert predictor._availability is None  # reset after the case


def test_predictor_derives_the_mask_from_zero_channels_and_refuses_empty_masks():
    net = RecordingNet()
    predictor = manual_predictor(net)
    data = case_data()
    data[2] = 0
    predictor.predict_logits_from_preprocessed_data(data)
    assert all(m.tolist() == [[True, True, False, True]] for m in net.masks)
    with pytest.raises(ValueError, match='no modality'):
        predictor.predict_logits_from_preprocessed_data(data, np.zeros(4, bool))
    with pytest.raises(ValueError, match='4 modalities'):
        predictor.predict_logits_from_preprocessed_data(data, np.ones(3, bool))


def test_predictor_mask_changes_the_prediction_of_missing_modality_networks():
    predictor = manual_predictor(RecordingNet())
    data = case_data()
    masked = predictor.predict_logits_from_preprocessed_data(data, np.array([True, False, True, True]))
    zeroed = data.clone()
    zeroed[1] = 0
    # same as zero-filling the channel (the mask is derived from it) ...
    torch.testing.assert_close(masked, predictor.predict_logits_from_preprocessed_data(zeroed))
    # ... and not the same as the full-modality prediction
    assert not torch.allclose(masked, predictor.predict_logits_from_preprocessed_data(data))


def test_stock_networks_get_zero_filled_input_only():
    net = StockNet()
    predictor = manual_predictor(net)
    data = case_data()
    masked = predictor.predict_logits_from_preprocessed_data(data, np.array([True, True, True, False]))
    assert net.calls == 30
    zeroed = data.clone()
    zeroed[3] = 0
    plain = manual_predictor(StockNet())
    plain.network.load_state_dict(net.state_dict())
    plain.list_of_parameters = [net.state_dict()]
    torch.testing.assert_close(masked, plain.predict_logits_from_preprocessed_data(zeroed))


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.5)):
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((3.0, -2.0, 1.0))
    sitk.WriteImage(image, str(path))


def test_prepare_case_files_zero_fills_absent_and_dropped_modalities(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    src, zero = tmp_path / 'in', tmp_path / 'zero'
    src.mkdir(), zero.mkdir()
    rng = np.random.default_rng(0)
    write_image(src / 'a_0000.nii.gz', rng.random((5, 6, 7)) + 1)
    write_image(src / 'a_0003.nii.gz', rng.random((5, 6, 7)) + 1)
    write_image(src / 'b_0001.nii.gz', np.zeros((5, 6, 7)))
    write_image(src / 'b_0003.nii.gz', rng.random((5, 6, 7)))
    names = ['T1', 'T1ce', 'T2', 'FLAIR']
    cases = scan_input_folder(str(src), '.nii.gz', 4)
    assert sorted(cases) == ['a', 'b'] and sorted(cases['a']) == [0, 3]
    rw = SimpleITKIO()
    files, report = prepare_case_files('a', cases['a'], names, [3], rw, '.nii.gz', str(zero))
    assert report == {'used': ['T1'], 'zero_filled': {'T1ce': 'file absent', 'T2': 'file absent',
                                                      'FLAIR': '--missing'}}
    assert files[0] == cases['a'][0] and all(f.startswith(str(zero)) for f in files[1:])
    images, properties = rw.read_images(files)
    assert images.shape == (4, 5, 6, 7) and np.any(images[0]) and not np.any(images[1:])
    assert tuple(properties['spacing']) == (1.5, 1.0, 1.0)  # zero files carry the geometry of the present one
    with pytest.raises(ValueError, match="case b: no modality at all.*T1ce: all-zero image.*FLAIR: --missing"):
        prepare_case_files('b', cases['b'], names, [3], rw, '.nii.gz', str(zero))
    write_image(src / 'c_0004.nii.gz', np.ones((5, 6, 7)))
    with pytest.raises(ValueError, match='c_0004.nii.gz: channel 0004 does not exist'):
        scan_input_folder(str(src), '.nii.gz', 4)


# ----------------------------------------------------------------------------------------------- end to end
