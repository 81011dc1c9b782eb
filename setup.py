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
    entry_points={"console_scripts": []},
)
