"""pip install . : the ROS-free core, the training and benchmark CLIs (no messages).

The ROS messages are built by CMake (scripts/setup.sh, or colcon). Packages are listed
explicitly: the repository root also holds launch/, config/ and test/, which must not
be installed as top-level Python packages.
"""

from setuptools import find_packages, setup

setup(
    name="uois_sam_ros",
    version="0.1.0",
    description="UOIS-SAM unseen object instance segmentation for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["uois_sam_ros", "uois_sam_ros.*"]),
    package_data={"uois_sam_ros": ["data/*", "data/**/*"]},
    include_package_data=True,
    install_requires=["numpy", "pyyaml", "scipy", "opencv-python-headless", "torch"],
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": [
        "uois-sam-bringup=uois_sam_ros.apps.bringup:main",
        "uois-sam-launch=uois_sam_ros.apps.launcher:main",
        "uois-sam-demo=uois_sam_ros.apps.demo:main",
        "uois-sam-camera=uois_sam_ros.nodes.camera:main",
        "uois-sam-hpg=uois_sam_ros.nodes.hpg:main",
        "uois-sam-segmentation=uois_sam_ros.nodes.segmentation:main",
        "uois-sam-grasp-node=uois_sam_ros.nodes.grasp:main",
        "uois-sam-amodal=uois_sam_ros.nodes.amodal:main",
        "uois-sam-bag=uois_sam_ros.apps.bag:main",
        "uois-sam-synth=uois_sam_ros.core.data.synthetic:main",
        "uois-sam-train-hpg=uois_sam_ros.training.hpg:main",
        "uois-sam-train-hdnet=uois_sam_ros.training.hdnet:main",
        "uois-sam-train-sam=uois_sam_ros.training.sam:main",
        "uois-sam-train-amodal=uois_sam_ros.training.amodal:main",
        "uois-sam-sweep=uois_sam_ros.training.sweep:main",
        "uois-sam-eval=uois_sam_ros.apps.eval:main",
        "uois-sam-grasp=uois_sam_ros.apps.grasp:main",
        "uois-sam-interactive-eval=uois_sam_ros.apps.interactive_eval:main",
        "uois-sam-bench=uois_sam_ros.bench.cli:main",
    ]},
)
