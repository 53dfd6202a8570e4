"""``python -m ocnet.plot RUN_DIR [RUN_DIR …] [--out DIR]``: draw a run's figures again, or
compare several runs in one figure (:func:`ocnet.results.plot.main`)."""
import sys

from .results.plot import main

if __name__ == "__main__":
    sys.exit(main())
