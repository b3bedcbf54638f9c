"""The tolerance comparison of notebook cells (conftest.py): it forgives a training run's CPU noise, and
nothing else."""

import nbformat
import pytest

from tests.nbval_tolerance import cell_tolerance, snap_within_tolerance


def test_numbers_within_the_tolerance_are_taken_as_stored():
    stored = "dense              1,330,432      540.8    819.8\n"
    fresh = "dense              1,330,432      561.6    846.4\n"  # the same run on an AVX2 CPU: +3.8 %, +3.2 %
    assert snap_within_tolerance(stored, fresh, rel=0.15) == stored


def test_a_number_outside_the_tolerance_is_left_to_fail():
    stored = "val ppl 819.8, train ppl 540.8"
    fresh = "val ppl 1000.2, train ppl 541.0"  # +22 %: the run is broken, not merely on another CPU
    assert snap_within_tolerance(stored, fresh, rel=0.15) == fresh


def test_the_padding_of_an_aligned_column_may_follow_the_width_of_a_number():
    stored = "val ppl   99.5 |\n"
    fresh = "val ppl  101.0 |\n"
    assert snap_within_tolerance(stored, fresh, rel=0.05) == stored
    assert snap_within_tolerance("val ppl 99.5", "val pp 101.0", rel=0.05) == "val pp 101.0"


def test_whole_numbers_are_compared_exactly():
    stored = "MoE 8x top-2   2,917,120   1,335,040   880.3"
    fresh = "MoE 8x top-2   2,917,121   1,335,040   880.3"
    assert snap_within_tolerance(stored, fresh, rel=0.5) == fresh


def test_other_words_are_never_forgiven():
    stored = "dense ahead on validation: True (819.8 vs 880.3)"
    fresh = "dense ahead on validation: False (900.1 vs 880.3)"
    assert snap_within_tolerance(stored, fresh, rel=0.5) == fresh
    assert snap_within_tolerance("a 1.0 b", "a 1.0 b 2.0", rel=0.5) == "a 1.0 b 2.0"


def test_signs_and_percentages_are_numbers_too():
    assert snap_within_tolerance("gap -0.031, dropped 10.6%", "gap -0.033, dropped 10.9%", rel=0.1) == (
        "gap -0.031, dropped 10.6%")
    assert snap_within_tolerance("dropped 10.6%", "dropped 12.0%", rel=0.1) == "dropped 12.0%"
    # a sign that flips is a different claim: -0.03 vs 0.03 are 200 % apart
    assert snap_within_tolerance("gap -0.03", "gap 0.03", rel=0.5) == "gap 0.03"
    # words with digits in them (top-2, 8x) are text, not numbers to forgive
    assert snap_within_tolerance("top-2 of 8x", "top-3 of 8x", rel=0.9) == "top-3 of 8x"


def test_the_marker_states_a_fraction():
    assert cell_tolerance("# NBVAL_TOLERANCE rel=0.15\n# (a training run)\nprint(1)") == 0.15
    assert cell_tolerance("print(1)") is None
    with pytest.raises(ValueError, match="rel=15: must be a fraction between 0 and 1"):
        cell_tolerance("# NBVAL_TOLERANCE rel=15\nprint(1)")


def test_the_hook_forgives_through_nbval_itself():
    """nbval's own comparison, called the way its runtest calls it, on a cell with the marker."""
    from nbval.plugin import IPyNbCell, nocolors

    class Cell:
        source = "# NBVAL_TOLERANCE rel=0.1\n# (a training run)\nprint(ppl)"

    class Parent:
        skip_compare = ("metadata", "execution_count")
        sanitize_patterns = {}

    item = IPyNbCell.__new__(IPyNbCell)
    item.cell, item.parent, item.colors = Cell(), Parent(), nocolors
    item.format_output_compare = lambda key, left, right: None  # the failure report needs a pytest session
    stored = [nbformat.v4.new_output("stream", name="stdout", text="val ppl 819.8\n")]

    def fresh(text):
        return [nbformat.v4.new_output("stream", name="stdout", text=text)]

    assert item.compare_outputs(fresh("val ppl 846.4\n"), stored)
    assert not item.compare_outputs(fresh("val ppl 920.0\n"), stored)
    Cell.source = "print(ppl)"  # the same numbers, no marker: compared as printed
    assert not item.compare_outputs(fresh("val ppl 846.4\n"), stored)
