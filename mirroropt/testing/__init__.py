"""Property-test kit for mirror maps (public: property-test your own maps with it).

Checks return a readable :class:`Report` and raise :class:`PropertyError` on failure, with a
:class:`Witness` (point, direction, value against the claim, how it was found):
:func:`check_monotone` and :func:`check_lipschitz` (certified locally by Lanczos on the Jacobian,
matrix-free, plus separated pairs and an adversarial ascent), :func:`check_round_trip`,
:func:`check_gradient_field`, :func:`check_reduces_to_gd`, :func:`check_differentiable`
(gradcheck through unrolled inner steps), and :func:`check_map`, which runs all that a map's
capability flags say apply. :func:`sample_points` draws seeded points of realistic magnitudes;
hypothesis strategies (``points_for``…) live in :mod:`mirroropt.testing.strategies` (needs
``mirroropt[test]``). See ``docs/testing.md``.
"""

from mirroropt.testing._checks import (
    PropertyError,
    Report,
    Witness,
    check_differentiable,
    check_gradient_field,
    check_lipschitz,
    check_map,
    check_monotone,
    check_reduces_to_gd,
    check_round_trip,
    default_rtol,
)
from mirroropt.testing._sampling import sample_points

__all__ = [
    "PropertyError",
    "Report",
    "Witness",
    "check_differentiable",
    "check_gradient_field",
    "check_lipschitz",
    "check_map",
    "check_monotone",
    "check_reduces_to_gd",
    "check_round_trip",
    "default_rtol",
    "sample_points",
]
