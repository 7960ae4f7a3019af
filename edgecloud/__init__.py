"""edgecloud: build, deploy and run AIoT applications across edge sites and a cloud.

The public SDK for component authors:

    from edgecloud import Component

    class Relay(Component):
        def on_message(self, msg):
            self.send("sink", msg.payload)
"""

from edgecloud.application.control import InAppController
from edgecloud.application.policy import BasicPolicy, Policy, Report
from edgecloud.application.sdk import Component, Message
from edgecloud.resource.mqtt import BackpressureError

__version__ = "0.1.0"

__all__ = ["BackpressureError", "BasicPolicy", "Component", "InAppController", "Message",
           "Policy", "Report", "__version__"]
