from setuptools import find_packages, setup

setup(
    name='nnunet_missingmod',
    version='0.1.0',
    description='nnU-Net v2 extension for brain tumour segmentation with missing MRI modalities',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=find_packages(include=['nnunet_missingmod', 'nnunet_missingmod.*'])
    + ['nnunet_missingmod.dataset_conversion'],
    package_dir={'nnunet_missingmod.dataset_conversion': 'dataset_conversion'},
    package_data={'nnunet_missingmod.splits': ['*.json']},  # the published BraTS splits
    install_requires=[
        'nnunetv2>=2.8.1,<2.9',
        'torch>=2.1',
        'batchgenerators>=0.25',
        'nibabel',
        'SimpleITK',
        'numpy',
        'matplotlib',
        'tqdm',
    ],
    extras_require={'test': ['pytest', 'pytest-timeout', 'scikit-learn', 'medpy', 'brats-evaluation'],
                    'brats': ['panoptica>=2.1']},
    entry_points={'console_scripts': [
        'nnUNetv2_mm_env = nnunet_missingmod.env:main',
        'nnUNetv2_mm_small_config = nnunet_missingmod.small_config:main',
        'nnUNetv2_mm_synthetic = nnunet_missingmod.dataset_conversion.synthetic_brats:main',
        'nnUNetv2_mm_convert_brats = nnunet_missingmod.dataset_conversion.brats:main',
        'nnUNetv2_mm_demo = nnunet_missingmod.demo:main',
        'nnUNetv2_mm_predict = nnunet_missingmod.inference.predict:main',
        'nnUNetv2_mm_benchmark = nnunet_missingmod.evaluation.benchmark:main',
        'nnUNetv2_mm_ciml_gradcam = nnunet_missingmod.methods.ciml.gradcam:main',
        'nnUNetv2_mm_perf = nnunet_missingmod.profiling.perf:main',
        'nnUNetv2_mm_benchmark_cost = nnunet_missingmod.profiling.benchmark_cost:main',
        'nnUNetv2_mm_compare = nnunet_missingmod.evaluation.compare:main',
    ]},
)
