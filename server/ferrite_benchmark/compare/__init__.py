"""`ferrite-benchmark compare`: the same workloads against ferrite and its peers, one after
another on one machine, and the table in bench/RESULTS.md regenerated from the results."""
