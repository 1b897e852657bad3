"""The planner: what runs next, what is recorded and what is emitted (pure, trio-free)."""
