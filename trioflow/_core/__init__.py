"""The pure, trio-free core: statuses and transitions, the graph, results, chunks, resume
targeting. Nothing in this package imports trio."""
