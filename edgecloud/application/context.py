"""What an instance knows about itself and its peers (re-exported for components).

The models live in `edgecloud.resource.runtime.context` because the node's runtime
carries them inside `InstanceSpec`; components keep importing them from here.
"""

from edgecloud.resource.runtime.context import CONTEXT_ENV, ControllerInfo, InstanceContext, Peer

__all__ = ["CONTEXT_ENV", "ControllerInfo", "InstanceContext", "Peer"]
