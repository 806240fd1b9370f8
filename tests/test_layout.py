import pytest

from linear_core import Budget, LineLayout


@pytest.mark.parametrize("text,ratio,lines", [("1/6", 1 / 6, None), ("0.25", 0.25, None), ("full", 1.0, None),
                                               ("4 lines", None, 4), ("3L", None, 3), (0.125, 0.125, None)])
def test_budget_parse(text, ratio, lines):
    budget = Budget.parse(text)
    assert budget.lines == lines
    assert budget.ratio == pytest.approx(ratio) if ratio is not None else budget.ratio is None


@pytest.mark.parametrize("grid,eol,budget,n,width,b", [
    (24, False, "1/4", 576, 24, 144), (24, False, "1/6", 576, 24, 96),
    (48, True, "1/6", 2352, 49, 392), (48, True, "1/8", 2352, 49, 294), (64, True, "1/8", 4160, 65, 520),
    (24, False, "4 lines", 576, 24, 96), (24, False, "30 lines", 576, 24, 576),
])
def test_paper_budgets(grid, eol, budget, n, width, b):
    layout = LineLayout(prefix_len=7, grid_h=grid, grid_w=grid, eol=eol, budget=budget)
    assert (layout.image_tokens, layout.line_tokens, layout.budget_tokens) == (n, width, b)
    assert layout.capacity == 7 + min(n, b + width)


def test_geometry():
    layout = LineLayout(prefix_len=3, grid_h=4, grid_w=5, eol=True)
    assert layout.line_of(5) == 0 and layout.line_of(6) == 1
    assert layout.is_line_end(5) and not layout.is_line_end(4)
    assert layout.position_of(0) == 3


@pytest.mark.parametrize("bad,message", [("0", "outside"), ("-1/6", "outside"), ("1.5", "outside"),
                                         ("abc", "Cannot read budget"), ("0 lines", "at least 1 line")])
def test_bad_budgets_say_what_to_change(bad, message):
    with pytest.raises(ValueError, match=message):
        Budget.parse(bad)


def test_layout_inconsistent_with_sequence():
    layout = LineLayout(prefix_len=2, grid_h=4, grid_w=4)
    with pytest.raises(ValueError, match="prefix_len=2"):
        layout.check_sequence(prefix_len=5)
    with pytest.raises(ValueError, match="do not fit a 4x4 grid"):
        layout.check_sequence(prefix_len=2, image_tokens=17)
    with pytest.raises(ValueError, match="empty"):
        LineLayout(prefix_len=2, grid_h=0, grid_w=4)
