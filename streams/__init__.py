"""The topic catalog, the batch engine agents run on, dead-letter plumbing and operator tools."""
