"""The `haproxy` router kind for `turnout.wiring`: an HAProxy that turnout starts and steers
(`HaproxyRouter`) or, with `router.adopt`, one the user already runs (`AdoptedHaproxy`), each
with what it can do."""

from __future__ import annotations

from turnout.routers.base import Capability, Router
from turnout.routers.haproxy.adopted import AdoptedHaproxy
from turnout.routers.haproxy.router import HaproxyRouter
from turnout.spec import Spec
from turnout.spec.routing import RouterChoice
from turnout.statedir import StateDir


class HaproxyKind:
    """`router: {kind: haproxy}`, adopted or not."""

    @staticmethod
    def capabilities_for(choice: RouterChoice) -> frozenset[Capability]:
        return AdoptedHaproxy.capabilities if choice.adopt is not None else HaproxyRouter.capabilities

    @staticmethod
    def build(spec: Spec, state: StateDir) -> Router:
        if spec.router.adopt is not None:
            return AdoptedHaproxy.build(spec, state)
        return HaproxyRouter.build(spec, state)
