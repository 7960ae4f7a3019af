"""Runtimes that run application instances on a node (the process runtime runs here)."""

from edgecloud.resource.runtime.process import ProcessRuntime
from edgecloud.resource.runtime.spec import InstanceSpec, InstanceState, InstanceStatus

__all__ = ["InstanceSpec", "InstanceState", "InstanceStatus", "ProcessRuntime"]
