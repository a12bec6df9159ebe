"""The unit-space algebra under every operator: union, product and sum refinement, constraint propagation."""

from __future__ import annotations

from netgraft.core import space as sp


def test_union_merges_constraints() -> None:
    a, b = sp.Space(6), sp.Space(6)
    sp.fix(a, "input")
    sp.union(a, b)
    assert sp.find(b).fixed == ["input"]


def test_split_product_refines_a_leaf() -> None:
    s = sp.Space(24)
    parts = sp.split_product(s, [2, 3, 4], "view")
    assert [p.size for p in parts] == [2, 3, 4]
    assert [x.size for x in sp.leaves(s)] == [2, 3, 4]


def test_split_product_regroups_existing_factors() -> None:
    s = sp.Space(24)
    sp.split_product(s, [4, 6], "a")
    parts = sp.split_product(s, [2, 12], "b")
    assert [p.size for p in parts] == [2, 12]
    assert [x.size for x in sp.leaves(s)] == [2, 2, 6]


def test_misaligned_split_is_refused() -> None:
    s = sp.Space(6)
    sp.split_product(s, [2, 3], "a")
    assert sp.split_product(s, [3, 2], "b") is None


def test_unions_of_products_align_factors() -> None:
    a, b = sp.Space(12), sp.Space(12)
    sp.split_product(a, [3, 4], "a")
    sp.split_product(b, [3, 2, 2], "b")
    root = sp.union(a, b)
    assert sorted(x.size for x in sp.leaves(root)) == [2, 2, 3]


def test_sum_split_and_concat() -> None:
    a, b = sp.Space(3), sp.Space(5)
    cat = sp.make_composite("sum", [a, b], "cat")
    pieces = sp.split_sum(cat, [3, 5], "split")
    assert sp.find(pieces[0]) is sp.find(a) and sp.find(pieces[1]) is sp.find(b)
    assert sp.split_sum(cat, [4, 4], "bad") is None


def test_incompatible_layouts_block() -> None:
    a = sp.make_composite("sum", [sp.Space(2), sp.Space(2)], "cat")
    b = sp.make_composite("prod", [sp.Space(2), sp.Space(2)], "view")
    sp.union(a, b, "add")
    assert all(x.blocked for x in sp.leaves(a))
