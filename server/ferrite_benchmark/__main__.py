"""`python -m ferrite_benchmark`: the same as the installed `ferrite-benchmark` script."""

import sys

from ferrite_benchmark.cli import main

sys.exit(main())
