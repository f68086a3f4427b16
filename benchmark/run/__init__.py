"""Running an experiment: the grid, one cell, the engine, training, parallel backends."""
