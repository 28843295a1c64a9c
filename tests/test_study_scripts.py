"""The study scripts name only trainers that exist: a renamed or mistyped trainer would otherwise surface after
hours of a study, as nnU-Net's "could not find the requested trainer"."""
import re
from pathlib import Path

import pytest

from nnunet_missingmod.training.nnUNet_extTrainer import discover_trainers

SCRIPTS = Path(__file__).resolve().parents[1] / 'scripts'
#: nnU-Net's own trainers the scripts use (the stock anchor of the comparison)
NNUNET_TRAINERS = {'nnUNetTrainer_5epochs'}


def named_trainers(script: Path) -> set:
    """Every ``nnUNetTrainer...`` word of the script, comments included: its ``TRAINERS`` values and the trainers
    of its ``KNOCKOUTS`` pairs (``TRAINER:PATH``)."""
    words = set(re.findall(r'\bnnUNetTrainer\w*', script.read_text()))
    return {w for w in words if w != 'nnUNetTrainer'}          # "nnUNetTrainer took ..." in a comment


@pytest.mark.parametrize('script', ['compare_methods.sh', 'ablation_study.sh'])
def test_every_trainer_a_study_script_names_exists(script):
    names = named_trainers(SCRIPTS / script)
    assert len(names) >= 5
    assert names - set(discover_trainers()) - NNUNET_TRAINERS == set()
