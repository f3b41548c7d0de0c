"""Session ownership and the state that must hold across replicas (``SessionRegistry``)."""

from gateway.cluster.registry import (
    ClusterUnavailable,
    InProcessRegistry,
    Lease,
    PendingSession,
    SessionRegistry,
)

__all__ = ["ClusterUnavailable", "InProcessRegistry", "Lease", "PendingSession", "SessionRegistry"]
