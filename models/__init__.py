"""Network definitions: VanillaNet in training and deploy form (every variant) and pooling helpers.

Depends on torch only.
"""

from vanilladeploy.models.vanillanet import (
    BN_EPS,
    VARIANTS,
    VanillaNet,
    VariantSpec,
    create_vanillanet,
    get_variant,
    randomize_,
)

__all__ = ["BN_EPS", "VARIANTS", "VanillaNet", "VariantSpec", "create_vanillanet", "get_variant", "randomize_"]
