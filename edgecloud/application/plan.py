"""The deployment plan: the topology plus where every instance runs."""

from __future__ import annotations

from collections import defaultdict

from pydantic import BaseModel, ConfigDict, Field

from edgecloud.application.topology import Application


class Instance(BaseModel):
    """One instance: `<component>-<n>` bound to a node of a site."""

    name: str
    component: str
    site: str
    node: str


class DeploymentPlan(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    app: str
    application: Application = Field(alias="topology")
    instances: list[Instance]

    def instances_of(self, component: str) -> list[Instance]:
        return [i for i in self.instances if i.component == component]

    def by_node(self) -> dict[str, list[Instance]]:
        out: dict[str, list[Instance]] = defaultdict(list)
        for i in self.instances:
            out[i.node].append(i)
        return dict(out)
