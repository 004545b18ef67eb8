"""Run machinery: the trainer, its callbacks, checkpoints and resume, interrupts, seeding and data parallelism."""
