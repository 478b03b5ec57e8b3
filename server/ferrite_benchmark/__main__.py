"""`python -m ferrite_benchmark`: the same as the installed `ferrite-benchmark` script."""

import sys

from ferrite_benchmark.extras import run_main

sys.exit(run_main())
