"""tv3s_ros: streaming TV3S video semantic segmentation for ROS 2.

The ROS-free core lives in ``tv3s_ros.model`` (network, checkpoints, streaming state) and
the modules next to it (pre/post-processing, streams, engine). ``tv3s_ros.ros`` holds the
thin ROS 2 layer and ``tv3s_ros.tools`` the command-line tools.
"""
# rosidl generates a Python package with the same name (holding ``tv3s_ros.msg``) into a
# different directory; extending the package path lets both halves import as one package.
import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
