"""The classifier's training pipeline, one stage a module: `config`, `transforms`, `data`,
`learner` (the exported learner, reloaded), `evaluate` (predictions, metrics), `interpret` (the
run's figures and report), `export`, `calibrate` and `engine` (the two methods' training loop)."""
