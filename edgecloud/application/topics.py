"""The topic scheme of applications. Only the SDK and the platform build these topics.

Every application topic starts with `sites/<site>/`, so the message service delivers it
to the broker of the site where the receiver runs (docs/internals.md).
"""

from __future__ import annotations


def inbox(site: str, app: str, instance: str) -> str:
    """Where `instance` of `app`, running at `site`, receives `send()` messages."""
    return f"sites/{site}/apps/{app}/{instance}/in"


def reports(site: str, app: str) -> str:
    """Component reports to the in-app controller running at `site`."""
    return f"sites/{site}/apps/{app}/control/reports"


def decisions(site: str, app: str, scope: str) -> str:
    """Policy decisions for the components at `site`; scope is `local` or `global`."""
    return f"sites/{site}/apps/{app}/control/decisions/{scope}"


def commands(site: str, app: str) -> str:
    """Controller operations (start, terminate, set, filter) for components at `site`."""
    return f"sites/{site}/apps/{app}/control/commands"


def user_topic(site: str, app: str, name: str) -> str:
    """Raw topics of `Component.publish/subscribe`, scoped to the application."""
    return f"sites/{site}/apps/{app}/topics/{name}"
