"""Use cases: commands, the command bus, handlers, the unit of work, the saga policy, ports."""
