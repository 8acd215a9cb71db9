"""Property-test kit for mirror maps (public: property-test your own maps with it).

Checks return a readable :class:`Report` and raise :class:`PropertyError` on failure:
:func:`check_monotone`, :func:`check_lipschitz`, :func:`check_round_trip`,
:func:`check_gradient_field`, :func:`check_reduces_to_gd`, :func:`check_differentiable`
(gradcheck through unrolled inner steps), and :func:`check_map`, which runs all
that a map's capability flags say apply. hypothesis strategies live in
:mod:`mirroropt.testing.strategies` (needs ``mirroropt[test]``).
"""

from mirroropt.testing._checks import (
    PropertyError,
    Report,
    check_differentiable,
    check_gradient_field,
    check_lipschitz,
    check_map,
    check_monotone,
    check_reduces_to_gd,
    check_round_trip,
)

__all__ = [
    "PropertyError",
    "Report",
    "check_differentiable",
    "check_gradient_field",
    "check_lipschitz",
    "check_map",
    "check_monotone",
    "check_reduces_to_gd",
    "check_round_trip",
]
