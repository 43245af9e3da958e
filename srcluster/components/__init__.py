"""Components built by name from small typed specs: generators and discriminators (`archs`), losses, pretrained
feature networks and validation metrics (`perceptual`, `metrics`), optimizers, schedulers and EMA (`optim`), generator
weight files (`weights`) and pretrained weight files found, staged or downloaded (`hub`). Nothing here reads the job
schema: the job composes the specs (see docs/architecture.md)."""
