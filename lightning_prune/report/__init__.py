"""The markdown report built from every run's results.json."""
