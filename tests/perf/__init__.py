"""Performance smoke: every benchmark in bench/ at a small size, its ratios held to floors."""
