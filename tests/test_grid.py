"""Time grids and partitions."""
import pytest

from ocnet.model.grid import Partition, TimeGrid


def test_time_grid_points_and_levels():
    g = TimeGrid(16, 2.0)
    assert g.h == 0.125 and g.t(4) == 0.5
    assert g.c_points(4) == [0, 4, 8, 12, 16]
    assert g.f_points(4) == [n for n in range(17) if n % 4]
    levels = g.levels(2, max_levels=10)
    assert [lv.N for lv in levels] == [16, 8, 4, 2]
    assert [lv.h for lv in levels] == [0.125, 0.25, 0.5, 1.0]
    assert [lv.N for lv in TimeGrid(12).levels(2, 10)] == [12, 6, 3]
    with pytest.raises(ValueError, match="cannot coarsen"):
        TimeGrid(10).coarsen(4)


@pytest.mark.parametrize("layers,ranks", [(16, 8), (17, 4), (5, 5), (7, 3), (1, 1)])
def test_partition_is_contiguous_and_balanced(layers, ranks):
    p = Partition(layers, ranks)
    bounds = [p.bounds(r) for r in range(ranks)]
    assert bounds[0][0] == 0 and bounds[-1][1] == layers
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert max(p.sizes()) - min(p.sizes()) <= 1 and min(p.sizes()) >= 1
    assert all(p.owner(n) == r for r, (a, b) in enumerate(bounds) for n in range(a, b))


def test_more_ranks_than_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="8 ranks but only 4 layers"):
        Partition(4, 8)
