"""``python -m ocnet.speedup [--config FILE.toml] [--key value …]``: each solver's predicted time
and speedup up to 1,024 ranks (:func:`ocnet.perf.speedup.main`)."""
import sys

from .perf.speedup import main

if __name__ == "__main__":
    sys.exit(main())
