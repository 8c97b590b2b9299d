"""Built-in processors, one module per workload."""
