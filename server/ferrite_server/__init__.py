"""ferrite-server: the data plane (model shards). See DESIGN.md "Processes"."""
