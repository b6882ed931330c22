"""Studies: plans of ``lightning-prune`` commands (the demo, the budget grid, the evidence) and their runner."""
