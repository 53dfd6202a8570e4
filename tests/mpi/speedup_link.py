"""Measure the link on P ranks (:func:`ocnet.perf.calibrate.link_costs`); rank 0 writes what
every rank measured to argv[1]."""
import json
import sys

from ocnet.perf.calibrate import link_costs
from ocnet.ranks.comm import world

comm = world()
link = link_costs(comm, repeats=10)
seen = comm.gather(vars(link))
if comm.rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(seen, f)
