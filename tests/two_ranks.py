"""Test support: the collectives of one rank of two, the other rank's contribution given, so an estimator's
cross-rank path is tested in one process."""


class TwoRanks:
    """Collectives of rank `rank` of 2 whose other rank holds `other` (as all_gather_objects returns)."""
    world = 2

    def __init__(self, rank, other):
        self.rank, self.other = rank, other

    def all_gather_objects(self, obj):
        return [obj, self.other] if self.rank == 0 else [self.other, obj]
