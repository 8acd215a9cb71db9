"""docs/testing.md runs: every python block, in order, and the hypothesis test it defines."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def _printed_in_doc() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("prints (one line, wrapped here):") + len("prints (one line, wrapped here):")
    block = text[start : text.index("The witness has the point")]
    return " ".join(line.strip() for line in block.strip().splitlines())


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_docs_testing_page_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    blocks = _blocks()
    assert len(blocks) == 3
    namespace: dict[str, object] = {"__name__": "docs_testing"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    user_test = namespace["test_my_map"]
    settings(max_examples=5)(user_test)()  # type: ignore[operator]
    printed = capsys.readouterr().out
    assert printed.startswith("[FAIL] Wiggle: strongly monotone: measured 0.50")
    assert printed.strip().split(" ")[:8] == _printed_in_doc().split(" ")[:8]
    assert "Witness: at z = points[" in printed and "vs claim 0.8" in printed
    assert " ".join(printed.split()) == _printed_in_doc()  # the page shows what it prints


def test_the_three_line_user_test_fails_for_a_broken_map() -> None:
    """The same three lines catch a map whose stated modulus is wrong."""
    import pytest
    from hypothesis import given

    from mirroropt.testing import PropertyError, check_map
    from mirroropt.testing.strategies import points_for
    from tests.testing._bad_maps import Reflection

    g = Reflection()

    @settings(max_examples=3)
    @given(points_for(g))
    def test_my_map(points):  # type: ignore[no-untyped-def]
        check_map(g, points)

    with pytest.raises(PropertyError, match=r"\[FAIL\] Reflection: strongly monotone"):
        test_my_map()
