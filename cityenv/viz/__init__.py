"""cityenv.viz: Rerun logging of a CityWorld env (see :mod:`cityenv.viz.log` for the entity tree).

- :mod:`cityenv.viz.log`: one ``log_*`` function per kind of data, taking a recording stream.
- :func:`default_blueprint`: the default viewer layout.
- :class:`RerunRecorder`: a Gymnasium wrapper that records an env to an ``.rrd`` file or a viewer.
"""

from __future__ import annotations

from cityenv.viz.blueprint import default_blueprint
from cityenv.viz.log import quaternion_xyzw
from cityenv.viz.recorder import RerunRecorder

__all__ = ["RerunRecorder", "default_blueprint", "quaternion_xyzw"]
