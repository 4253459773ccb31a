"""A local IAM Roles Anywhere + STS service for the demo and the tests (DESIGN §10)."""

from .faults import Fault
from .model import EmulatorConfig, Profile, TrustAnchor, load_config
from .service import Emulator, serve
from .verify import EmulatorRefusal

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "EmulatorRefusal",
    "Fault",
    "Profile",
    "TrustAnchor",
    "load_config",
    "serve",
]
