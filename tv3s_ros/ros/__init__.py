"""ROS 2 layer of tv3s_ros: the ``tv3s_node`` and its helpers.

Thin by design: everything about the model, state and images lives in the ROS-free core
(:mod:`tv3s_ros.engine`, :mod:`tv3s_ros.streams`, :mod:`tv3s_ros.image_codec`, and the camera
naming rule in :mod:`tv3s_ros.camera_names`); the modules here only translate between ROS and
that core.

- :mod:`~tv3s_ros.ros.params`: node parameters (declaration, descriptors, validation).
- :mod:`~tv3s_ros.ros.convert`: messages <-> numpy.
- :mod:`~tv3s_ros.ros.diagnostics`: per-camera counters and the ``/diagnostics`` message.
- :mod:`~tv3s_ros.ros.rviz_config`: RViz 2 config (input + overlay per camera).
- :mod:`~tv3s_ros.ros.camera_worker`: pending frame per camera, worker thread, publishing (not a Node).
- :mod:`~tv3s_ros.ros.node`: the node (ROS plumbing around the worker) and ``main``.
- :mod:`~tv3s_ros.ros.lifecycle_node`: the same node as a managed (lifecycle) node (``--lifecycle``).

Importing this package, ``params`` or ``rviz_config`` does not import rclpy (so
launch files, tools and static tests can use them without a ROS installation).
"""
