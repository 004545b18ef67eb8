"""Training methods built on Lightning: the caption policy module (shared by GRPO and SFT), SFT, and their
torchmetrics. GRPO itself lives in ``vcap.grpo`` (``vcap.grpo.module.GRPOModule``)."""
