"""The operations every backend offers: the shared, driver-neutral modules of
:mod:`relay.store`, imported when first asked for (opening a store does not load them
all; :mod:`relay.store.dkim` loads a DKIM library). A backend class inherits them and
adds its driver-specific entry points (open, transaction, change feeds, lock, …).
"""

from __future__ import annotations

from relay.store.interfaces import (
    Campaigns,
    Counts,
    Directory,
    DkimKeys,
    EventLog,
    Intake,
    Lease,
    Queue,
    ReadModel,
    Routing,
    Settings,
    Subscriptions,
    Suppressions,
    Verification,
)


class SharedOperations:
    @property
    def settings(self) -> Settings:
        from relay.store import settings

        return settings

    @property
    def events(self) -> EventLog:
        from relay.store import events

        return events

    @property
    def queue(self) -> Queue:
        from relay.store import queue

        return queue

    @property
    def intake(self) -> Intake:
        from relay.store import intake

        return intake

    @property
    def counts(self) -> Counts:
        from relay.store import counts

        return counts

    @property
    def directory(self) -> Directory:
        from relay.store import directory

        return directory

    @property
    def campaigns(self) -> Campaigns:
        from relay.store import campaigns

        return campaigns

    @property
    def verification(self) -> Verification:
        from relay.store import verification

        return verification

    @property
    def read_model(self) -> ReadModel:
        from relay.store import views

        return views

    @property
    def subscriptions(self) -> Subscriptions:
        from relay.store import subscriptions

        return subscriptions

    @property
    def suppressions(self) -> Suppressions:
        from relay.store import suppressions

        return suppressions

    @property
    def lease(self) -> Lease:
        from relay.store import lease

        return lease

    @property
    def dkim(self) -> DkimKeys:
        from relay.store import dkim

        return dkim

    @property
    def routing(self) -> Routing:
        from relay.store import routing

        return routing
